"""``fundwatch validate FILE``: the report format, line numbers, duplicates, bad input."""

from __future__ import annotations

import doctest
import gzip
import io
from pathlib import Path

import orjson
import pytest

from streams import validate as validate_module
from streams.records import MAX_RECORD_BYTES
from streams.validate import PackedLedger, validate_file
from tests.factories import contribution, dumps, reversal_of, settlement


def run(path: Path | str) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = validate_file(path, out)
    return code, out.getvalue().splitlines()


def write_lines(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(end.join(lines) + end)
    return path


S1 = settlement(settlement_id="S1", person_id="P1")
S2 = settlement(settlement_id="S2", person_id="P2")
C1 = contribution(contribution_id="C1")
C2 = contribution(contribution_id="C2", source="adjustment_out", amount="-300.00")

MIXED = [
    dumps(S1),                                                                  # 1 valid
    b"",                                                                        # 2 blank
    b"   \t ",                                                                  # 3 blank
    dumps(C1),                                                                  # 4 valid
    b"this is not json",                                                        # 5
    dumps(S2)[:80],                                                             # 6 truncated
    b"\xff\xfe\x00garbage\x01\x02",                                             # 7 binary
    orjson.dumps({**dict(reversed(list(S1.items()))), "total_cost": 12345.6}),  # 8 duplicate
    dumps({**S1, "fund_paid": "9876.47", "personal_paid": "2469.13"}),          # 9 conflict
    dumps({**S2, "settlement_id": "S3", "sex": "X", "age": 200}),               # 10
    dumps(reversal_of(S1, settlement_id="S1-R")),                               # 11 valid
    dumps(reversal_of(S1, settlement_id="S1-R2")),                              # 12
    b"[1, 2]",                                                                  # 13
    dumps(C2) + b"\r",                                                          # 14 CRLF
    dumps(settlement(settlement_id="S4", total_cost="-1.00", fund_paid="-1.00",
                     personal_paid="-0.00")),                                   # 15
]


def test_mixed_file_exact_report(tmp_path):
    path = tmp_path / "mixed.jsonl"
    # the last line has no newline at all
    path.write_bytes(b"\n".join(MIXED) + b"\n" + dumps(S2))
    code, lines = run(path)
    assert code == 1
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    assert all(len(r) == 3 for r in rows)
    assert [(r[0], r[1]) for r in rows] == [
        ("5", "not_json"),
        ("6", "not_json"),
        ("7", "not_utf8"),
        ("9", "conflicting_duplicate"),
        ("10", "invalid_value,invalid_age"),
        ("12", "already_reversed"),
        ("13", "not_an_object"),
        ("15", "negative_amount"),
    ]
    messages = {r[0]: r[2] for r in rows}
    assert messages["5"].startswith("the record is not valid JSON: ")
    assert messages["6"].startswith("the record is not valid JSON: ")
    assert messages["7"] == ("the record is not UTF-8 text (byte 0xff at position 0); "
                             "save the file as UTF-8")
    assert messages["9"] == (
        "settlement id 'S1' was already received with different content; the first "
        "version is kept. Send a correction as a reversal (reverses) plus a new settlement "
        "with a new id, not under the same id")
    assert messages["10"] == (
        'sex is "X"; expected one of "F", "M"; '
        "age is 200; expected a whole number of years from 0 to 130")
    assert messages["12"] == (
        "settlement 'S1-R2' reverses 'S1', which was already reversed by 'S1-R'; "
        "a settlement can be reversed only once")
    assert messages["13"] == ("the record is a list, not a JSON object {...}; "
                              "write one record per line")
    assert messages["15"] == "; ".join(
        f"{f} is -1.00; expected 0 or more (only a reversal, with reverses set, carries "
        "negative amounts)" for f in ("total_cost", "fund_paid"))
    assert lines[-1] == (
        "# 14 records: 5 valid, 1 duplicates, 8 rejected (not_json 2, already_reversed 1, "
        "conflicting_duplicate 1, invalid_age 1, invalid_value 1, negative_amount 1, "
        "not_an_object 1, not_utf8 1)")
    assert sum(line.startswith("#") for line in lines) == 1


def test_gzip_gives_the_same_report(tmp_path):
    plain = write_lines(tmp_path / "mixed.jsonl", MIXED)
    packed = tmp_path / "mixed.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert run(packed) == run(plain)


def test_all_valid_exits_0_with_only_a_summary(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [dumps(S1), dumps(C1), dumps(S2)])
    assert run(path) == (0, ["# 3 records: 3 valid, 0 duplicates, 0 rejected"])
    assert run(str(path))[0] == 0


def test_exact_duplicates_are_not_rejections(tmp_path):
    path = write_lines(tmp_path / "dups.jsonl", [dumps(S1), dumps(S1), dumps(C1), dumps(C1),
                                                 orjson.dumps(S1, option=orjson.OPT_INDENT_2)
                                                 .replace(b"\n", b" ")])
    assert run(path) == (0, ["# 5 records: 2 valid, 3 duplicates, 0 rejected"])


def test_empty_and_blank_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert run(empty) == (0, ["# 0 records: 0 valid, 0 duplicates, 0 rejected"])
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n\n  \r\n\t\n")
    assert run(blank) == (0, ["# 0 records: 0 valid, 0 duplicates, 0 rejected"])


def _padded(size: int) -> bytes:
    """A valid settlement of exactly ``size`` bytes (padded in an unknown field)."""
    base = dumps({**S2, "pad": ""})
    line = dumps({**S2, "pad": "x" * (size - len(base))})
    assert len(line) == size
    return line


def test_huge_lines_are_reported_and_skipped(tmp_path):
    huge = b'{"schema": "settlement/v1", "pad": "' + b"x" * (3 * MAX_RECORD_BYTES) + b'"}'
    path = write_lines(tmp_path / "huge.jsonl", [
        dumps(S1),
        huge,
        _padded(MAX_RECORD_BYTES),          # at the limit: fine
        _padded(MAX_RECORD_BYTES + 1),      # one byte over
        dumps(C1),
    ], end=b"\r\n")
    code, lines = run(path)
    assert code == 1
    refused = f"bytes; records larger than {MAX_RECORD_BYTES} bytes are refused"
    assert lines == [
        f"2\trecord_too_large\tthe record is {len(huge)} {refused}",
        f"4\trecord_too_large\tthe record is {MAX_RECORD_BYTES + 1} {refused}",
        "# 5 records: 3 valid, 0 duplicates, 2 rejected (record_too_large 2)",
    ]


def test_huge_last_line_without_newline(tmp_path):
    path = tmp_path / "tail.jsonl"
    path.write_bytes(dumps(S1) + b"\n" + b"[" * (2 * MAX_RECORD_BYTES))
    code, lines = run(path)
    assert code == 1 and lines[0].startswith("2\trecord_too_large\t")


def test_messages_never_break_the_columns(tmp_path):
    path = write_lines(tmp_path / "tabs.jsonl", [
        dumps({**S1, "sex": "\t", "person_id": ""}),
        dumps({"schema": "settlement\n/v1"}),
    ])
    code, lines = run(path)
    assert code == 1
    assert [len(line.split("\t")) for line in lines[:-1]] == [3, 3]


def test_truncated_gzip_is_reported(tmp_path):
    data = gzip.compress(b"\n".join([dumps(settlement()) for _ in range(2000)]) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    code, lines = run(path)
    assert code == 1
    assert lines[-1].startswith("# error: the file could not be read after line ")
    assert lines[-2].startswith("# ") and "rejected" in lines[-2]


def test_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        validate_file(tmp_path / "nope.jsonl", io.StringIO())


def test_packed_ledger_behaves_like_a_dict():
    ledger = PackedLedger()
    ledger["a"] = {"d": "x", "t": 1}
    value = ledger["a"]
    value["t"] = 2  # in place: not stored, as with a Faust table
    assert ledger["a"] == {"d": "x", "t": 1} and ledger.get("b") is None
    assert "a" in ledger and len(ledger) == 1 and list(ledger) == ["a"]
    del ledger["a"]
    assert len(ledger) == 0


def test_docstring_examples():
    result = doctest.testmod(validate_module)
    assert result.failed == 0 and result.attempted > 0
