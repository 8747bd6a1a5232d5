"""Knowledge-base rules: constraints read from a lookup table, checked at stream speed.

The national regulator and the provinces publish knowledge bases (知识库) of coding
and billing constraints: diagnoses and services restricted to one sex (性别限定) or
to an age range (年龄限定: 儿童专用, 新生儿, 老年). This module is the reusable part
of a rule driven by such a table:

* :class:`KnowledgeTable` loads a CSV file (UTF-8, a header row) of constraints
  keyed by an ICD-10 code **or code prefix** — ``O`` (the whole pregnancy
  chapter), ``N4`` (N40–N49), ``N40`` (one category), ``D07.4`` (one subcategory)
  — and answers :meth:`~KnowledgeTable.lookup` with the entry of the **longest
  prefix** that matches the code. The longest entry alone decides: it replaces the
  shorter ones, so an exception inside a chapter is one more row (``D07``, carcinoma
  in situ of genital organs, mixes sites: ``D07.0``–``D07.3`` say F and
  ``D07.4``–``D07.6`` M; a row with sex and ages all empty lifts a shorter prefix's
  constraint for the codes under it, and is refused anywhere else).
* :class:`KnowledgeRule` is a :class:`~rules.core.Rule` base that loads the table
  named by its ``table`` parameter once, at start-up (and the table of each
  province that overrides it), and gives ``table_for(province)``.

Columns (any order; names in lower case):

=========== ======== ===========================================================
column      required meaning
=========== ======== ===========================================================
code        yes      ICD-10 code or prefix: a letter, then up to two digits, then
                     (after an optional dot) up to four digits or letters
sex         yes      ``M``, ``F`` or empty (either)
min_age     yes      youngest age in years allowed (0–130), or empty
max_age     yes      oldest age in years allowed (0–130), or empty
description yes      what the code is (Chinese or English), for the auditor
source      no       where the constraint comes from
(others)    no       kept in :attr:`Constraint.extra` for a rule that reads them
=========== ======== ===========================================================

Blank lines and lines whose first field starts with ``#`` are skipped. Codes
match without regard to the dot (``N40.1`` and ``N401`` are the same key). The
file is checked whole at load; :class:`TableError` (a
:class:`~rules.core.RuleConfigError`, so start-up stops) lists every problem,
each naming the file, the line and the column.

Lookup is O(length of the code), not a scan: one dict per prefix length, tried
longest first (at most 8 probes), and a memo of the codes already seen — a stream
uses a few thousand distinct codes, so after warm-up a lookup is one dict hit
whatever the size of the table.

>>> table = KnowledgeTable.from_text(
...     "code,sex,min_age,max_age,description\\n"
...     "O,F,10,55,pregnancy\\n"
...     "D07.0,F,,,carcinoma in situ of endometrium\\n"
...     "D07.4,M,,,carcinoma in situ of penis\\n", name="example.csv")
>>> table.lookup("O80").code, table.lookup("O80.0").code, table.lookup("D074").code
('O', 'O', 'D07.4')
>>> table.lookup("D07.9") is None, table.lookup("I21.9") is None
(True, True)
>>> entry = table.lookup("O80")
>>> entry.violation("M", 34), entry.violation("F", 60), entry.violation("F", 28)
('sex', 'age', None)
>>> entry.constraint
'female, aged 10–55'
"""
from __future__ import annotations

import csv
import inspect
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from rules.core import RuleConfigError, Rule

__all__ = ["Constraint", "KnowledgeRule", "KnowledgeTable", "TableError"]

REQUIRED = ("code", "sex", "min_age", "max_age", "description")
OPTIONAL = ("source",)
MAX_AGE = 130  # the contract's bound on a settlement's age
MAX_REPORTED = 20  # problems listed in one TableError
MEMO_MAX = 200_000  # distinct codes remembered by lookup before the memo starts over

# A code or prefix: letter, up to two digits, then (after the two digits) an optional
# dot and up to four digits/letters — the contract's ICD-10 shape, cut anywhere.
_CODE = re.compile(r"[A-Z](?:[0-9](?:[0-9](?:\.?[0-9A-Z]{1,4})?)?)?")
_MISS = object()


class TableError(RuleConfigError):
    """A knowledge table that cannot be used; ``problems`` lists every one found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more"] if more else [])))


@dataclass(frozen=True, slots=True)
class Constraint:
    """One row of a table: who a code (or every code under a prefix) is for."""

    code: str  # as written in the table (upper case), e.g. "N40" or "D07.4"
    sex: str | None  # "M", "F" or None (either)
    min_age: int | None
    max_age: int | None
    description: str
    source: str = ""
    line: int = 0  # line in the file, for the auditor who looks the row up
    extra: tuple[tuple[str, str], ...] = field(default=())  # other columns, in order

    def violation(self, sex: str, age: int) -> str | None:
        """``"sex"``, ``"age"``, ``"sex and age"`` when a person of this sex and age
        contradicts the entry; None when the entry allows them."""
        bad_sex = self.sex is not None and sex != self.sex
        bad_age = ((self.min_age is not None and age < self.min_age)
                   or (self.max_age is not None and age > self.max_age))
        if bad_sex:
            return "sex and age" if bad_age else "sex"
        return "age" if bad_age else None

    @property
    def constraint(self) -> str:
        """The constraint in words: ``'female, aged 10–55'``, ``'aged 40 or over'``."""
        parts = []
        if self.sex is not None:
            parts.append("male" if self.sex == "M" else "female")
        lo, hi = self.min_age, self.max_age
        if lo is not None and hi is not None:
            parts.append(f"aged {lo}–{hi}" if lo != hi else f"aged {lo}")
        elif lo is not None:
            parts.append(f"aged {lo} or over")
        elif hi is not None:
            parts.append(f"aged {hi} or under")
        return ", ".join(parts) or "anyone"

    def as_evidence(self) -> dict[str, Any]:
        """The entry as an alert shows it (JSON-able)."""
        out = {"code": self.code, "sex": self.sex, "min_age": self.min_age,
               "max_age": self.max_age, "constraint": self.constraint,
               "description": self.description, "source": self.source, "line": self.line}
        out.update((column, value) for column, value in self.extra if column not in out)
        return out


def _key(code: str) -> str:
    return code.replace(".", "")


class KnowledgeTable:
    """Constraints keyed by ICD-10 code prefix; the longest matching prefix wins."""

    def __init__(self, entries: Iterable[Constraint], name: str = "<table>") -> None:
        self.name = name
        by_length: dict[int, dict[str, Constraint]] = {}
        count = 0
        for entry in entries:
            key = _key(entry.code)
            slot = by_length.setdefault(len(key), {})
            if key in slot:
                raise TableError([f"{name}: duplicate code {entry.code!r}"])
            slot[key] = entry
            count += 1
        self._len = count
        # Longest first: the first hit is the longest matching prefix.
        self._by_length = sorted(by_length.items(), reverse=True)
        self._memo: dict[str, Constraint | None] = {}

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"KnowledgeTable({self.name!r}, {self._len} entries)"

    def entries(self) -> list[Constraint]:
        """Every entry, in file order."""
        return sorted((e for _, slot in self._by_length for e in slot.values()),
                      key=lambda e: (e.line, e.code))

    def lookup(self, code: str) -> Constraint | None:
        """The entry of the longest prefix of ``code`` (dot or no dot), or None."""
        hit = self._memo.get(code, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        key = _key(code)
        found = None
        size = len(key)
        for length, slot in self._by_length:
            if length <= size:
                found = slot.get(key[:length])
                if found is not None:
                    break
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()  # bounded: a stream of random junk cannot grow it
        self._memo[code] = found
        return found

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> "KnowledgeTable":
        """Read and check a CSV file; :class:`TableError` lists what is wrong."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TableError([f"{path}: cannot read the table: {exc.strerror or exc}"]) \
                from None
        try:
            text = raw.decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is fine
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise TableError([f"{path}, line {line}: not UTF-8 text (save the table as "
                              f"'CSV UTF-8'; GBK/GB18030 is not read)"]) from None
        return cls.from_text(text, name=str(path))

    @classmethod
    def from_text(cls, text: str, name: str = "<table>") -> "KnowledgeTable":
        """Parse CSV text; ``name`` is the file named in errors."""
        problems: list[str] = []
        entries: list[Constraint] = []
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: list[str] | None = None
        first_line: dict[str, int] = {}
        line = 1
        try:
            for row in reader:
                start, line = line, reader.line_num + 1  # a quoted field may span lines
                if not row or not any(f.strip() for f in row) or row[0].lstrip().startswith("#"):
                    continue
                if header is None:
                    header = [f.strip() for f in row]
                    problems += _check_header(name, start, header)
                    if problems:
                        break
                    continue
                entry = _parse_row(name, start, header, row, problems)
                if entry is None:
                    continue
                key = _key(entry.code)
                if key in first_line:
                    problems.append(f"{name}, line {start}, column 'code': duplicate code "
                                    f"{entry.code!r} (first on line {first_line[key]})")
                    continue
                first_line[key] = start
                entries.append(entry)
        except csv.Error as exc:
            problems.append(f"{name}, line {reader.line_num}: not valid CSV: {exc}")
        if header is None and not problems:
            problems.append(f"{name}, line 1: the table is empty (expected a header row: "
                            f"{','.join(REQUIRED + OPTIONAL)})")
        if not problems:
            problems += _pointless_rows(name, entries)
        if problems:
            raise TableError(problems)
        return cls(entries, name=name)


def _check_header(name: str, line: int, header: list[str]) -> list[str]:
    problems = []
    seen = set()
    for column in header:
        if column in seen:
            problems.append(f"{name}, line {line}, column {column!r}: named twice in the "
                            f"header")
        seen.add(column)
    missing = [c for c in REQUIRED if c not in seen]
    if missing:
        problems.append(f"{name}, line {line}: the header lacks the column(s) "
                        f"{', '.join(missing)} (has: {', '.join(header)})")
    return problems


def _pointless_rows(name: str, entries: list[Constraint]) -> list[str]:
    """A row that restricts nothing is only meaningful as an exception to a shorter
    prefix (the longest entry alone decides); anywhere else it is a slip."""
    keys = {_key(e.code) for e in entries}
    return [f"{name}, line {e.line}, column 'sex': the row restricts nothing (sex, "
            f"min_age and max_age are all empty) and is no exception to a shorter code"
            for e in entries
            if e.sex is None and e.min_age is None and e.max_age is None
            and not any(_key(e.code)[:n] in keys for n in range(1, len(_key(e.code))))]


def _parse_row(name: str, line: int, header: list[str], row: list[str],
               problems: list[str]) -> Constraint | None:
    where = f"{name}, line {line}"
    if len(row) != len(header):
        problems.append(f"{where}: {len(row)} fields where the header has {len(header)}")
        return None
    values = {column: value.strip() for column, value in zip(header, row)}
    before = len(problems)

    def bad(column: str, message: str) -> None:
        problems.append(f"{where}, column {column!r}: {message}")

    code = values["code"].upper()
    if not code:
        bad("code", "empty (an ICD-10 code or prefix such as O, N40 or C61 is needed)")
    elif not _CODE.fullmatch(code):
        bad("code", f"{values['code']!r} is not an ICD-10 code or prefix "
                    f"(a letter, up to two digits, then .xxxx: O, N4, N40, D07.4)")
    sex = values["sex"]
    if sex not in ("M", "F", ""):
        bad("sex", f"{sex!r} is not M, F or empty (either sex)")
    ages = {}
    for column in ("min_age", "max_age"):
        text = values[column]
        if text == "":
            ages[column] = None
        elif not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > MAX_AGE:
            bad(column, f"{text!r} is not a whole number of years from 0 to {MAX_AGE}, "
                        f"or empty")
            ages[column] = None
        else:
            ages[column] = int(text)
    if ages["min_age"] is not None and ages["max_age"] is not None \
            and ages["min_age"] > ages["max_age"]:
        bad("min_age", f"{ages['min_age']} is above max_age {ages['max_age']}")
    if not values["description"]:
        bad("description", "empty (say what the code is, for the auditor)")
    if len(problems) > before:
        return None
    extra = tuple((c, v) for c, v in values.items() if c not in REQUIRED + OPTIONAL)
    return Constraint(code=code, sex=sex or None, min_age=ages["min_age"],
                      max_age=ages["max_age"], description=values["description"],
                      source=values.get("source", ""), line=line, extra=extra)


class KnowledgeRule(Rule):
    """A rule driven by a :class:`KnowledgeTable` named by its ``table`` parameter.

    Subclasses declare ``table`` among their ``params`` (a ``Param(str, ...)``) and
    call :meth:`table_for` with the province whose table applies. A relative path
    is resolved against the folder of the subclass's module (the package folder the
    example table ships in); an absolute path is used as given. Every table named
    — the default and each province's override — is loaded and checked once, when
    the rule is built, so a bad file stops start-up instead of a worker.
    """

    table_param: ClassVar[str] = "table"

    def __init__(self, registry=None, provinces: Mapping[str, Mapping[str, Any]] | None = None,
                 **overrides: Any) -> None:
        super().__init__(registry=registry, provinces=provinces, **overrides)
        self._tables: dict[str, KnowledgeTable] = {}
        names = {self.p[self.table_param]}
        names.update(values[self.table_param] for values in self._by_province.values())
        for value in sorted(names):
            try:
                self._tables[value] = KnowledgeTable.load(self.resolve_table(value))
            except TableError as exc:
                raise TableError([f"rules.{self.rule_id}.{self.table_param}: {p}"
                                  for p in exc.problems]) from None

    @classmethod
    def table_folder(cls) -> Path:
        return Path(inspect.getfile(cls)).resolve().parent

    @classmethod
    def resolve_table(cls, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else cls.table_folder() / path

    def table_for(self, province: str | None = None) -> KnowledgeTable:
        """The table that applies in ``province`` (its override, else the default)."""
        return self._tables[self.param(self.table_param, province)]
