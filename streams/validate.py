r"""``fundwatch validate FILE``: check a JSON Lines file against the interchange contract.

Prints one line per rejected record, ``LINE<TAB>REASON[,REASON...]<TAB>message``, where
LINE is the physical line number (from 1), the reasons are the distinct codes in the
order found and the message joins the reasons' messages with ``"; "``. Blank lines are
skipped silently; exact duplicates are counted, not rejected; conflicting duplicates
and bad reversals are rejected (the file is admitted in order against one ledger, as
the live path would). Summary lines follow, each starting with ``#``. Reading never
stops at a bad line, whether it is not JSON, not UTF-8 or enormous.

>>> import io, tempfile
>>> with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
...     _ = f.write(b'{"schema": "settlement/v2"}\n\n[1, 2]\n')
>>> out = io.StringIO()
>>> validate_file(f.name, out)
1
>>> print(out.getvalue().replace("\t", " | "), end="")
1 | unknown_schema | schema is "settlement/v2", which this version does not read; expected "settlement/v1" or "contribution/v1"
3 | not_an_object | the record is a list, not a JSON object {...}; write one record per line
# 2 records: 0 valid, 0 duplicates, 2 rejected (not_an_object 1, unknown_schema 1)
"""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from streams.admission import admit
from streams.records import MAX_RECORD_BYTES, Reason, Rejected, parse

__all__ = ["PackedLedger", "validate_file"]

# A line may end in "\r\n"; reading two bytes past the limit tells "at the limit" from
# "over it" without holding an oversized line in memory.
_READ_LIMIT = MAX_RECORD_BYTES + 2
_SKIP_CHUNK = 1 << 20


class PackedLedger(MutableMapping[str, Any]):
    """A dict ledger that keeps each value as compact JSON bytes.

    An offline run over a large file holds one ledger entry per record; packed, an
    entry costs about a third of the memory of the dict it stands for. Values are
    decoded on read, so callers see fresh objects and must write changes back by
    assignment, exactly as with a Faust table.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> Any:
        return orjson.loads(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._data.get(key)
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _clean(text: str) -> str:
    # Keep the three-column format intact whatever a message quotes.
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def validate_file(path: str | Path, out: TextIO) -> int:
    """Validate the JSONL file ``path`` (``.gz`` by suffix), report to ``out``.

    Returns 1 if any record was rejected (or the file could not be read to its end),
    else 0. Opening errors (no such file, no permission) propagate as ``OSError``.

    >>> import io, tempfile
    >>> with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write(b'{"schema": "contribution/v1", "contribution_id": "C1", '
    ...                 b'"received_at": "2024-03-01T00:00:00Z", "pool_region": "440900", '
    ...                 b'"insurance_type": "employee", "amount": 5, "source": "employer"}\\n' * 2)
    >>> out = io.StringIO()
    >>> validate_file(f.name, out), out.getvalue()
    (0, '# 2 records: 1 valid, 1 duplicates, 0 rejected\\n')
    """
    path = Path(path)
    ledger = PackedLedger()
    by_code: Counter[str] = Counter()
    records = valid = duplicates = rejected = 0
    line_no = 0
    write = out.write
    failure: str | None = None

    with _open(path) as f:
        readline = f.readline
        while True:
            try:
                line = readline(_READ_LIMIT)
            except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt .gz
                failure = (f"# error: the file could not be read after line {line_no} "
                           f"({type(e).__name__}: {e}); the rest was not checked")
                break
            if not line:
                break
            line_no += 1
            reasons: tuple[Reason, ...]
            if len(line) == _READ_LIMIT and not line.endswith(b"\n"):
                size, tail = len(line), line[-2:]
                try:
                    while True:  # skip the rest of the physical line, chunk by chunk
                        chunk = readline(_SKIP_CHUNK)
                        size += len(chunk)
                        tail = (tail + chunk)[-2:]
                        if not chunk or chunk.endswith(b"\n"):
                            break
                except (EOFError, OSError, zlib.error):
                    pass  # the next read reports it
                size -= 2 if tail == b"\r\n" else 1 if tail.endswith(b"\n") else 0
                records += 1
                reasons = (Reason("record_too_large", f"the record is {size} bytes; records "
                                  f"larger than {MAX_RECORD_BYTES} bytes are refused"),)
            else:
                line = line.strip()
                if not line:
                    continue
                records += 1
                try:
                    event = parse(line)
                except Rejected as e:
                    reasons = e.reasons
                else:
                    verdict = admit(event, ledger)
                    if verdict.outcome == "accepted":
                        valid += 1
                        continue
                    if verdict.outcome == "duplicate":
                        duplicates += 1
                        continue
                    reasons = verdict.reasons
            rejected += 1
            codes = list(dict.fromkeys(r.code for r in reasons))
            by_code.update(codes)
            write(f"{line_no}\t{','.join(codes)}\t"
                  f"{_clean('; '.join(r.message for r in reasons))}\n")

    summary = f"# {records} records: {valid} valid, {duplicates} duplicates, {rejected} rejected"
    if by_code:
        summary += " (" + ", ".join(f"{code} {n}" for code, n in
                                    sorted(by_code.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"
    write(summary + "\n")
    if failure is not None:
        write(failure + "\n")
        return 1
    return 1 if rejected else 0
