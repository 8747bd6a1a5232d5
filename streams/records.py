"""Events of the interchange contract: parsing, validation and canonical form.

The contract (``shared/contract/README.md`` and its JSON Schemas) fixes two input
event kinds, ``settlement/v1`` and ``contribution/v1``. :func:`parse` turns one raw
JSON record into a frozen :class:`Settlement` or :class:`Contribution`, or raises
:class:`Rejected` listing *every* problem found, each as a stable reason code
(:data:`REASON_CODES`) plus a sentence a person keying data at a county hospital can
act on.

Money is exact: amounts become integer fen. JSON is parsed with ``orjson`` (fast);
a JSON *number* in a money field is checked against its decimal text, falling back to
an exact ``Decimal`` parse of the record only when the raw text holds a number that a
binary float could have silently rounded (three or more decimals, or an exponent).

Between internal stages events travel as :func:`to_canonical` dicts and come back
with :func:`from_canonical` (no re-validation). :func:`digest` hashes the canonical
form, so a record re-sent with another key order, spacing, ``12.3`` instead of
``"12.30"`` or ``Z`` instead of ``+00:00`` is the same content.

>>> ev = parse('{"schema": "contribution/v1", "contribution_id": "C1",'
...            ' "received_at": "2024-03-01T09:30:00+08:00", "pool_region": "440900",'
...            ' "insurance_type": "resident", "amount": 1500.5, "source": "employer"}')
>>> ev.amount_fen, ev.pool_key, ev.kind
(150050, '440900:resident', 'contribution')
>>> to_canonical(ev)["amount"]
'1500.50'
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final

import orjson

__all__ = [
    "MAX_RECORD_BYTES",
    "REASON_CODES",
    "Contribution",
    "Event",
    "Item",
    "Reason",
    "Rejected",
    "Settlement",
    "digest",
    "fen_to_yuan_str",
    "from_canonical",
    "parse",
    "to_canonical",
]

#: Largest record accepted, in bytes. Kafka's default ``message.max.bytes`` is about
#: 1 MB, so a bigger record could never travel the live path; refusing it offline too
#: keeps the two drivers in agreement and bounds memory when reading files.
MAX_RECORD_BYTES: Final = 1 << 20

SETTLEMENT_SCHEMA: Final = "settlement/v1"
CONTRIBUTION_SCHEMA: Final = "contribution/v1"

#: Every reason code :func:`parse` and :func:`streams.admission.admit` can emit, with
#: a one-line description. Codes are part of the operators' interface: never rename one.
REASON_CODES: Final[dict[str, str]] = {
    # the record as a whole
    "not_utf8": "the record is not valid UTF-8 text",
    "not_json": "the record is not valid JSON",
    "not_an_object": "the record is JSON but not an object {...}",
    "record_too_large": f"the record is larger than {MAX_RECORD_BYTES} bytes",
    "unknown_schema": "the 'schema' field names no schema this version reads",
    # single fields
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong JSON type (e.g. a number where text is expected)",
    "invalid_value": "a field's value is not one the contract allows (enumerations, "
    "a level for a pharmacy, a settlement reversing itself)",
    "invalid_id": "an identifier is empty or longer than the contract allows",
    "invalid_region": "a region code is not 6 digits in one of the 31 mainland provinces",
    "invalid_datetime": "a date-time is not RFC 3339 (YYYY-MM-DDTHH:MM:SS[.fff]±HH:MM)",
    "datetime_without_offset": "a date-time has no UTC offset ('Z' or ±HH:MM)",
    "invalid_date": "a date is not a real calendar date written YYYY-MM-DD",
    "invalid_amount": "an amount is not a decimal yuan value with at most 2 decimals "
    "and 13 integer digits",
    "negative_amount": "an amount is negative where the contract requires >= 0",
    "positive_amount_in_reversal": "a reversal carries a positive amount (they are <= 0)",
    "invalid_diagnosis": "a diagnosis is not an ICD-10 code like 'I21.9'",
    "missing_diagnosis": "a non-pharmacy settlement has no diagnosis",
    "invalid_age": "age is not a whole number of years from 0 to 130",
    # rules across fields of one record
    "amounts_do_not_add_up": "fund_paid + personal_paid differs from total_cost",
    "items_do_not_add_up": "the cost items do not sum to total_cost",
    "discharge_before_admission": "discharged_on is earlier than admitted_on",
    "inpatient_without_dates": "an inpatient settlement lacks admitted_on or discharged_on",
    # rules across records (streams.admission)
    "conflicting_duplicate": "an id already seen arrives again with different content",
    "reversal_unknown_original": "a reversal names a settlement that was never accepted",
    "reversal_mismatch": "a reversal's person, pool or institution differs from the original's",
    "reversal_amounts_mismatch": "a reversal's amounts are not the negated original amounts",
    "already_reversed": "the original settlement was already reversed by another record",
    "reversal_of_reversal": "a reversal names a settlement that is itself a reversal",
    "beyond_retention": "the record's event time is older than the ledger remembers "
    "(ledger_retention_days behind the watermark): it cannot be checked for duplicates",
}

SEXES: Final = frozenset({"M", "F"})
INSURANCE_TYPES: Final = frozenset({"employee", "resident"})
INSTITUTION_TYPES: Final = frozenset({"hospital", "primary_care", "pharmacy"})
VISIT_TYPES: Final = frozenset({"inpatient", "outpatient", "emergency", "pharmacy"})
ITEM_CATEGORIES: Final = frozenset(
    {"bed", "drug", "exam", "treatment", "material", "nursing", "other"}
)
FILINGS: Final = frozenset({"none", "temporary", "long_term", "emergency"})
SOURCES: Final = frozenset(
    {"employer", "individual", "fiscal_subsidy", "adjustment_in", "adjustment_out"}
)

# 13 integer digits of yuan, the bound the contract's decimal-string pattern sets;
# numbers get the same bound (beyond it a float could not be exact anyway).
_MAX_ABS_FEN: Final = 10**15 - 1
_MAX_REPORTED_ITEM_PROBLEMS: Final = 10


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class Reason:
    """One problem with a record: a stable ``code`` and a human ``message``."""

    code: str
    message: str


class Rejected(Exception):
    """A record that breaks the contract; ``reasons`` lists every problem found.

    >>> try:
    ...     parse(b"[1, 2]")
    ... except Rejected as e:
    ...     print(e.codes)
    ('not_an_object',)
    """

    reasons: tuple[Reason, ...]

    def __init__(self, reasons: tuple[Reason, ...] | list[Reason]) -> None:
        reasons = tuple(reasons)
        if not reasons:
            raise ValueError("Rejected needs at least one reason")
        # args=(reasons,) keeps the exception picklable (multiprocessing, Faust).
        super().__init__(reasons)
        self.reasons = reasons

    @property
    def codes(self) -> tuple[str, ...]:
        """The reason codes, in the order found."""
        return tuple(r.code for r in self.reasons)

    def __str__(self) -> str:
        return "; ".join(r.message for r in self.reasons)


def _slot_init(cls):
    """Give a frozen slots dataclass an ``__init__`` that fills each slot through its
    descriptor. The dataclass's own ``__init__`` sets every field through
    ``object.__setattr__`` by name (it must get past the frozen ``__setattr__``): a
    Settlement, built at least three times per record on the live path (parse,
    admission, detect), took 3.9–4.9 µs that way and takes 1.7–1.9 µs this way
    (timeit, best of five). Same arguments, same instance; only for classes whose
    fields are all in ``__init__``, without defaults, and that have no
    ``__post_init__``.

    >>> Item("drug", 100, None) == Item(category="drug", amount_fen=100, quantity=None)
    True
    """
    names = [f.name for f in fields(cls)]
    if hasattr(cls, "__post_init__") or any(
            not f.init or f.default is not MISSING or f.default_factory is not MISSING
            for f in fields(cls)):
        raise TypeError(f"{cls.__name__}: _slot_init takes no defaults, init=False fields "
                        "or __post_init__")
    setters = {f"_set_{name}": cls.__dict__[name].__set__ for name in names}
    source = (f"def __init__(self, {', '.join(names)}):\n"
              + "".join(f"    _set_{name}(self, {name})\n" for name in names))
    exec(source, setters)  # noqa: S102 - as dataclasses builds its own __init__
    init = setters["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


@_slot_init
@dataclass(frozen=True, slots=True)
class Item:
    """One cost line of a settlement (``items[]``)."""

    category: str
    amount_fen: int
    quantity: float | None


@_slot_init
@dataclass(frozen=True, slots=True)
class Settlement:
    """A validated ``settlement/v1`` event; money in integer fen."""

    schema: str
    settlement_id: str
    settled_at: datetime
    person_id: str
    sex: str
    age: int
    insurance_type: str
    insured_region: str
    treatment_region: str
    institution_id: str
    institution_type: str
    institution_level: int | None
    chain_id: str | None
    visit_type: str
    admitted_on: date | None
    discharged_on: date | None
    diagnoses: tuple[str, ...]
    total_cost_fen: int
    fund_paid_fen: int
    personal_paid_fen: int
    items: tuple[Item, ...] | None
    filing: str
    reverses: str | None

    kind: ClassVar[str] = "settlement"

    @property
    def insured_province(self) -> str:
        """Two-digit province prefix of the insured region (参保地)."""
        return self.insured_region[:2]

    @property
    def treatment_province(self) -> str:
        """Two-digit province prefix of the treatment region (就医地)."""
        return self.treatment_region[:2]

    @property
    def is_cross_province(self) -> bool:
        return self.insured_region[:2] != self.treatment_region[:2]

    @property
    def is_cross_region(self) -> bool:
        return self.insured_region != self.treatment_region

    @property
    def pool_key(self) -> str:
        """The insured pool, ``"<region>:<insurance_type>"`` (expenditure is counted here)."""
        return f"{self.insured_region}:{self.insurance_type}"

    @property
    def is_reversal(self) -> bool:
        return self.reverses is not None

    @property
    def event_time(self) -> datetime:
        return self.settled_at

    @property
    def record_id(self) -> str:
        return self.settlement_id


@_slot_init
@dataclass(frozen=True, slots=True)
class Contribution:
    """A validated ``contribution/v1`` event (money into a pool), in integer fen.

    ``amount_fen`` is the signed amount as received. Only ``adjustment_out`` (调剂金上解)
    may be negative; the contract does not say which sign an ``adjustment_out`` must
    carry, so both are accepted and kept as sent.
    """

    schema: str
    contribution_id: str
    received_at: datetime
    pool_region: str
    insurance_type: str
    amount_fen: int
    source: str

    kind: ClassVar[str] = "contribution"

    @property
    def pool_key(self) -> str:
        return f"{self.pool_region}:{self.insurance_type}"

    @property
    def event_time(self) -> datetime:
        return self.received_at

    @property
    def record_id(self) -> str:
        return self.contribution_id


Event = Settlement | Contribution


# --------------------------------------------------------------------------- money


def fen_to_yuan_str(fen: int) -> str:
    """Format integer fen as yuan with exactly two decimals.

    >>> fen_to_yuan_str(123440), fen_to_yuan_str(-1230), fen_to_yuan_str(5)
    ('1234.40', '-12.30', '0.05')
    """
    # %-formatting of divmod() is about twice as fast as an f-string here (hot path).
    if fen < 0:
        return "-%d.%02d" % divmod(-fen, 100)  # noqa: UP031
    return "%d.%02d" % divmod(fen, 100)  # noqa: UP031


_MONEY_TEXT = re.compile(r"-?[0-9]{1,13}(?:\.[0-9]{1,2})?")
_MONEY_TEXT_2DP = re.compile(r"-?[0-9]{1,13}\.[0-9]{2}")  # the usual shape, "123.40"
# repr() of a float with at most two decimals and no exponent.
_FLOAT_REPR_2DP = re.compile(r"-?[0-9]+\.[0-9]{1,2}")


def _fen_from_text(text: str) -> int | None:
    """Fen from a contract decimal string (``-?D{1,13}(.D{1,2})?``), or None."""
    if _MONEY_TEXT_2DP.fullmatch(text) is not None:
        return int(text.replace(".", "", 1))
    if _MONEY_TEXT.fullmatch(text) is None:
        return None
    dot = text.find(".")
    if dot < 0:
        return int(text) * 100
    return int(text[:dot] + text[dot + 1 :]) * (10 if len(text) - dot == 2 else 1)


def _fen_from_float(v: float) -> int | None:
    """Fen from a float whose shortest repr has <= 2 decimals, else None.

    Exact when the JSON text had no exponent and at most 2 decimals (see _risky_numbers):
    a decimal of <= 15 significant digits survives float() and repr() unchanged, and a
    longer one with <= 2 decimals is above the 13-digit bound anyway.
    """
    s = repr(v)
    if _FLOAT_REPR_2DP.fullmatch(s) is None:
        return None
    return int(s.replace(".", "", 1)) * (10 if s[-2] == "." else 1)


# Number tokens whose decimal text a binary float may have rounded: three or more
# decimals (the token ends at an exponent, white space or a delimiter, which keeps
# times such as "10:00:00.123+08:00" out), or any exponent. A match inside a string
# only costs the slower exact parse, never a wrong answer.
_FRAC3 = re.compile(rb"\.[0-9]{3,}[eE \t\n\r,\]}]")  # literal prefix: fast scan
_EXPONENT = re.compile(rb"[0-9][eE][-+]?[0-9]+[ \t\n\r]*[,\]}]")
_DIGITS_TO_0 = bytes.maketrans(b"123456789E", b"000000000e")


def _risky_numbers(raw: bytes) -> bool:
    """True when the record may hold a number that float() could have rounded."""
    if _FRAC3.search(raw) is not None:
        return True
    # Cheap pre-check before the slow exponent regex: is any digit followed by e/E?
    return b"0e" in raw.translate(_DIGITS_TO_0) and _EXPONENT.search(raw) is not None


class _NeedExact(Exception):
    """Raised inside the fast path when a float's JSON text must be read exactly."""


# --------------------------------------------------------------------------- time

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_LOCAL_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_fromiso_dt = datetime.fromisoformat
_fromiso_d = date.fromisoformat


def _iso(dt: datetime) -> str:
    """RFC 3339 with the received offset; UTC written as ``Z``."""
    s = dt.isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def _utc_iso(dt: datetime) -> str:
    return _iso(dt.astimezone(UTC))


# --------------------------------------------------------------------------- checks

_MISSING: Final[Any] = object()
_ID_MAX = {"settlement_id": 64, "person_id": 128, "institution_id": 64,
           "contribution_id": 64, "reverses": 64}
_REGION_DIGITS = re.compile(r"[0-9]{6}")
_REGION = re.compile(r"(?:1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5])[0-9]{4}")
_ICD10 = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?")
_ICD10_NO_DOT = re.compile(r"([A-Z][0-9]{2})([0-9A-Z]{1,4})")
_TEXT_MONEY_HINTS = (
    (re.compile(r".*[,，].*"), " (remove the thousands separators)"),
    (re.compile(r".*[¥￥元].*|\s.*|.*\s"), " (write only the number)"),
    (re.compile(r"-?[0-9]+\.[0-9]{3,}"), " (more than 2 decimals)"),
    (re.compile(r"-?[0-9]{14,}(?:\.[0-9]*)?"), " (more than 13 digits before the decimal point)"),
)
_MONEY_EXPECTED = 'expected yuan with at most 2 decimals, e.g. 1234.5 or "1234.50"'


def _show(value: Any, limit: int = 60) -> str:
    """A value as the person sees it in their data (JSON text), shortened."""
    if isinstance(value, Decimal):
        text = str(value)
    else:
        try:
            text = orjson.dumps(value, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = json.dumps(value, default=str)  # ASCII-escapes lone surrogates
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _described(value: Any) -> str:
    """``null``, ``true``, or the type and the value: "text '12,30'", "a number 5"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{_type_name(value)} {_show(value)}"


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_int(v: Any) -> int | None:
    """An integer from a JSON number with no fractional part (JSON Schema's integer)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else None
    if isinstance(v, Decimal):
        return int(v) if v.is_finite() and v == v.to_integral_value() else None
    return None


class _Check:
    """The problems of one record, and the slow paths that explain them.

    The per-schema functions below test the common, valid shape of each field inline
    (that is most records, and it is what keeps parsing fast); only a value that fails
    the quick test reaches a method here, which re-examines it, reports every problem
    as a Reason and returns the value when it was acceptable after all (e.g. an age
    written 30.0), else None.
    """

    __slots__ = ("errs", "exact", "raw", "safe_floats", "schema")

    def __init__(self, raw: bytes, exact: bool, schema: str) -> None:
        self.errs: list[Reason] = []
        self.raw = raw
        self.exact = exact
        self.schema = schema
        # Whether float values can be trusted to carry their JSON text (lazy, cached).
        self.safe_floats: bool | None = None

    def err(self, code: str, message: str) -> None:
        self.errs.append(Reason(code, message))

    def floats_are_exact(self) -> bool:
        if self.safe_floats is None:
            self.safe_floats = self.exact or not _risky_numbers(self.raw)
        return self.safe_floats

    def required(self, d: dict[str, Any], name: str) -> Any:
        """The field's value, or _MISSING (reported) when it is absent or null."""
        v = d.get(name, _MISSING)
        if v is _MISSING:
            self.err("missing_field", f"field '{name}' is missing; {self.schema} requires it")
        elif v is None:
            self.err("missing_field", f"field '{name}' is null; {self.schema} requires a value")
            return _MISSING
        return v

    def ident(self, d: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
        v = d.get(name) if optional else self.required(d, name)
        if v is _MISSING or v is None:
            return None
        limit = _ID_MAX[name]
        if not isinstance(v, str):
            self.err("wrong_type", f"{name} is {_described(v)}; "
                     f"expected text of 1 to {limit} characters")
        elif not 1 <= len(v) <= limit:
            self.err("invalid_id", f"{name} {_show(v)} has {len(v)} characters; "
                     f"expected 1 to {limit}")
        else:
            return v
        return None

    def text_or_null(self, d: dict[str, Any], name: str) -> None:
        v = d.get(name)
        self.err("wrong_type", f"{name} is {_described(v)}; expected text or null")

    def unicode(self, d: dict[str, Any], names: tuple[str, ...]) -> None:
        """Exact (stdlib) parses let lone surrogate escapes through; orjson never does."""
        for name in names:
            v = d.get(name)
            if isinstance(v, str) and not _encodable(v):
                self.err("invalid_value", f"{name} {_show(v)} contains an unpaired \\u "
                         "surrogate escape; expected valid Unicode text")

    def enum(self, d: dict[str, Any], name: str, allowed: frozenset[str]) -> None:
        v = self.required(d, name)
        if v is not _MISSING:
            self.err("invalid_value", f"{name} is {_show(v)}; expected one of "
                     + ", ".join(f'"{a}"' for a in sorted(allowed)))

    def region(self, d: dict[str, Any], name: str) -> None:
        v = self.required(d, name)
        if v is _MISSING:
            return
        if not isinstance(v, str):
            hint = f' (write it as text: "{v}")' if type(v) is int else ""
            self.err("wrong_type", f"{name} is {_described(v)}{hint}; "
                     "expected a 6-digit region code as text, e.g. \"440900\"")
        elif _REGION_DIGITS.fullmatch(v):
            self.err("invalid_region", f"{name} {_show(v)} starts with '{v[:2]}', which is not "
                     "one of the 31 mainland province codes (11-15, 21-23, 31-37, 41-46, "
                     "50-54, 61-65)")
        else:
            self.err("invalid_region", f"{name} is {_show(v)}; expected a 6-digit GB/T 2260 "
                     "region code, e.g. \"440900\"")

    def datetime(self, d: dict[str, Any], name: str) -> None:
        v = self.required(d, name)
        if v is _MISSING:
            return
        example = "e.g. \"2024-03-01T10:15:00+08:00\""
        if not isinstance(v, str):
            self.err("wrong_type", f"{name} is {_described(v)}; expected an RFC 3339 "
                     f"date-time as text, {example}")
        elif _LOCAL_DATETIME.fullmatch(v):
            hint = " (and put a 'T' between the date and the time)" if v[10] == " " else ""
            self.err("datetime_without_offset", f"{name} {_show(v)} has no UTC offset; add "
                     f"'+08:00' (China Standard Time) or 'Z' (UTC) at the end{hint}")
        elif not _RFC3339.fullmatch(v):
            hint = ""
            if v.endswith("z"):
                hint = " (write the final 'Z' in upper case)"
            elif len(v) > 10 and v[10] == " ":
                hint = " (put a 'T' between the date and the time)"
            elif len(v) >= 19 and v[17:19] == "60":
                hint = " (second 60, a leap second, cannot be stored; use 59.999999)"
            self.err("invalid_datetime", f"{name} is {_show(v)}; expected an RFC 3339 date-time "
                     f"with offset, hours 00-23, minutes and seconds 00-59, {example}{hint}")
        else:
            try:
                _fromiso_dt(v)
            except ValueError as e:
                self.err("invalid_datetime", f"{name} {_show(v)} is not a real date and time "
                         f"({e})")

    def date(self, name: str, v: Any) -> None:
        if not isinstance(v, str):
            extra = "; leave the field out when there is no date" if v is None else ""
            self.err("wrong_type", f"{name} is {_described(v)}; expected a date as "
                     f"text, e.g. \"2024-03-01\"{extra}")
            return
        try:
            if _ISO_DATE.fullmatch(v):
                _fromiso_d(v)
        except ValueError as e:
            self.err("invalid_date", f"{name} {_show(v)} is not a real calendar date ({e})")
        else:
            self.err("invalid_date", f"{name} is {_show(v)}; expected a date written "
                     "YYYY-MM-DD, e.g. \"2024-03-01\"")

    def money(self, v: Any, name: str, *, allow_negative: bool,
              reversal: bool = False) -> int | None:
        """Integer fen from a JSON number or decimal string; None (reported) if invalid."""
        fen = self._fen(v, name)
        if fen is None:
            return None
        if reversal:
            if fen > 0:
                self.err("positive_amount_in_reversal", f"{name} is {fen_to_yuan_str(fen)} in a "
                         "reversal (reverses is set); a reversal's amounts are the negated "
                         "originals, so they must be 0 or negative")
                return None
        elif fen < 0 and not allow_negative:
            if self.schema == SETTLEMENT_SCHEMA:
                self.err("negative_amount", f"{name} is {fen_to_yuan_str(fen)}; expected 0 or "
                         "more (only a reversal, with reverses set, carries negative amounts)")
            else:
                self.err("negative_amount", f"{name} is {fen_to_yuan_str(fen)}; only source "
                         "\"adjustment_out\" may carry a negative amount")
            return None
        return fen

    def _fen(self, v: Any, name: str) -> int | None:
        if isinstance(v, str):
            fen = _fen_from_text(v)
            if fen is None:
                hint = next((h for rx, h in _TEXT_MONEY_HINTS if rx.fullmatch(v)), "")
                self.err("invalid_amount", f"{name} is {_show(v)}{hint}; {_MONEY_EXPECTED}")
            return fen
        if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
            self.err("invalid_amount", f"{name} is {_described(v)}; "
                     f"{_MONEY_EXPECTED}")
            return None
        if isinstance(v, int):
            fen = v * 100
        elif isinstance(v, float):
            if not self.floats_are_exact():
                raise _NeedExact
            fen = _fen_from_float(v)
            if fen is None:
                if abs(v) < 1e13:
                    self.err("invalid_amount", f"{name} is {_show(v)}, which has more than 2 "
                             f"decimals; {_MONEY_EXPECTED}")
                    return None
                fen = _MAX_ABS_FEN + 1  # exponent form of a huge number
        else:  # Decimal: the exact text of a JSON number (slow path)
            t = v.as_tuple()
            extra = -2 - int(t.exponent)
            if extra > 0 and any(t.digits[-extra:]):
                self.err("invalid_amount", f"{name} is {_show(v)}, which has more than 2 "
                         f"decimals; {_MONEY_EXPECTED}")
                return None
            if v and v.adjusted() >= 13:
                fen = _MAX_ABS_FEN + 1
            else:
                # Exact: v is a multiple of 0.01 below 1e13, so rounding to the context's
                # 28 digits could only drop trailing zeros.
                fen = int(v.scaleb(2))
        if -_MAX_ABS_FEN <= fen <= _MAX_ABS_FEN:
            return fen
        self.err("invalid_amount", f"{name} is {_show(v)}, which is too large; expected at "
                 "most 13 digits before the decimal point")
        return None

    def age(self, d: dict[str, Any]) -> int | None:
        v = self.required(d, "age")
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
            self.err("wrong_type", f"age is {_described(v)}; expected a whole number "
                     "of years (a JSON number, not text)")
            return None
        age = _as_int(v)
        if age is not None and 0 <= age <= 130:
            return age  # e.g. 30.0: an integer in JSON Schema's sense
        self.err("invalid_age", f"age is {_show(v)}; expected a whole number of years from 0 "
                 "to 130")
        return None

    def level(self, v: Any) -> int | None:
        level = _as_int(v)
        if level in (1, 2, 3):
            return level  # e.g. 3.0
        self.err("invalid_value", f"institution_level is {_show(v)}; expected 1, 2, 3 or null")
        return None

    def diagnoses(self, d: dict[str, Any]) -> tuple[str, ...] | None:
        v = self.required(d, "diagnoses")
        if v is _MISSING:
            return None
        if not isinstance(v, list):
            self.err("wrong_type", f"diagnoses is {_described(v)}; expected a list "
                     "of ICD-10 codes, e.g. [\"I21.9\", \"E11.9\"]")
            return None
        bad = [(i, x) for i, x in enumerate(v)
               if not (isinstance(x, str) and _ICD10.fullmatch(x))]
        shown = ", ".join(f"diagnoses[{i}] is {_show(x)}{_icd_hint(x)}" for i, x in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        self.err("invalid_diagnosis", f"{shown}{more}; expected ICD-10 codes like \"I21.9\" "
                 "(capital letter, 2 digits, optional '.' and 1-4 digits or capitals)")
        return None

    def item(self, it: Any, i: int, reversal: bool) -> Item | None:
        where = f"items[{i}]"
        if not isinstance(it, dict):
            self.err("wrong_type", f"{where} is {_described(it)}; expected an "
                     "object like {\"category\": \"drug\", \"amount\": \"12.30\"}")
            return None
        ok = True
        cat = it.get("category", _MISSING)
        if cat is _MISSING or cat is None:
            self.err("missing_field", f"{where}.category is "
                     f"{'missing' if cat is _MISSING else 'null'}; every cost line needs one")
            ok = False
        elif not (isinstance(cat, str) and cat in ITEM_CATEGORIES):
            self.err("invalid_value", f"{where}.category is {_show(cat)}; expected one of "
                     + ", ".join(f'"{a}"' for a in sorted(ITEM_CATEGORIES)))
            ok = False
        amt = it.get("amount", _MISSING)
        fen = None
        if amt is _MISSING or amt is None:
            self.err("missing_field", f"{where}.amount is "
                     f"{'missing' if amt is _MISSING else 'null'}; every cost line needs one")
        else:
            fen = self.money(amt, f"{where}.amount", allow_negative=False, reversal=reversal)
        q = it.get("quantity", _MISSING)
        quantity: float | None = None
        if q is not _MISSING:
            if isinstance(q, bool) or not isinstance(q, (int, float, Decimal)):
                self.err("wrong_type", f"{where}.quantity is {_described(q)}; "
                         "expected a number (or leave the field out)")
                ok = False
            else:
                try:
                    quantity = float(q)
                except OverflowError:
                    quantity = math.inf
                if math.isinf(quantity):
                    self.err("invalid_value", f"{where}.quantity is {_show(q)}, which is too "
                             "large for a number")
                    ok = False
        if not ok or fen is None:
            return None
        return Item(cat, fen, quantity)


def _icd_hint(x: Any) -> str:
    if not isinstance(x, str):
        return ""
    if x != x.upper() and _ICD10.fullmatch(x.upper()):
        return f" (capital letters: \"{x.upper()}\")"
    m = _ICD10_NO_DOT.fullmatch(x.upper())
    return f" (with a dot: \"{m[1]}.{m[2]}\")" if m else ""


def _quick_fen(v: Any, c: _Check) -> int | None:
    """Fen for the common valid shapes of a money value, else None (take the slow path)."""
    cls = v.__class__
    if cls is str:
        return _fen_from_text(v)
    if cls is float:
        return _fen_from_float(v) if c.floats_are_exact() else None
    if cls is int:
        return v * 100
    return None


# --------------------------------------------------------------------------- parse


def parse(raw: bytes | str) -> Settlement | Contribution:
    """Parse and validate one contract record; raise :class:`Rejected` with all problems.

    Fields the contract does not name are ignored. A missing ``institution_level`` is
    read as null. A leading UTF-8 byte order mark is ignored (RFC 8259 allows it).

    >>> try:
    ...     parse('{"schema": "contribution/v1", "contribution_id": "",'
    ...           ' "received_at": "2024-03-01T00:00:00", "pool_region": "440900",'
    ...           ' "insurance_type": "employee", "amount": "-5.00", "source": "employer"}')
    ... except Rejected as e:
    ...     for r in e.reasons:
    ...         print(r.code, "|", r.message)
    invalid_id | contribution_id "" has 0 characters; expected 1 to 64
    datetime_without_offset | received_at "2024-03-01T00:00:00" has no UTC offset; add '+08:00' (China Standard Time) or 'Z' (UTC) at the end
    negative_amount | amount is -5.00; only source "adjustment_out" may carry a negative amount
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    elif not isinstance(raw, bytes):
        raw = bytes(raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise Rejected((Reason("record_too_large", f"the record is {len(raw)} bytes; records "
                               f"larger than {MAX_RECORD_BYTES} bytes are refused"),))
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]
    try:
        obj = orjson.loads(raw)
        exact = False
    except orjson.JSONDecodeError as e:
        obj = _load_exact(raw, e)
        exact = True
    try:
        return _check(obj, raw, exact)
    except _NeedExact:
        return _check(_load_exact(raw, None), raw, True)


def _load_exact(raw: bytes, fast_error: orjson.JSONDecodeError | None) -> Any:
    """Parse with the stdlib, JSON numbers with fractions/exponents as exact Decimals."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected((Reason("not_utf8", f"the record is not UTF-8 text (byte "
                               f"0x{raw[e.start]:02x} at position {e.start}); save the file "
                               "as UTF-8"),)) from None
    # orjson refuses some valid JSON only over numbers (beyond a double's range); retry
    # those exactly, so that they are reported as bad amounts, not as broken JSON.
    if fast_error is not None and "number" not in str(fast_error):
        raise Rejected((Reason("not_json", f"the record is not valid JSON: {fast_error}"),))
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        msg = fast_error if fast_error is not None else e
        raise Rejected((Reason("not_json", f"the record is not valid JSON: {msg}"),)) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check(obj: Any, raw: bytes, exact: bool) -> Settlement | Contribution:
    if obj.__class__ is not dict:
        raise Rejected((Reason("not_an_object", f"the record is {_type_name(obj)}, not a JSON "
                               "object {...}; write one record per line"),))
    schema = obj.get("schema", _MISSING)
    if schema == SETTLEMENT_SCHEMA:
        return _settlement(obj, _Check(raw, exact, SETTLEMENT_SCHEMA))
    if schema == CONTRIBUTION_SCHEMA:
        return _contribution(obj, _Check(raw, exact, CONTRIBUTION_SCHEMA))
    known = f'expected "{SETTLEMENT_SCHEMA}" or "{CONTRIBUTION_SCHEMA}"'
    if schema is _MISSING or schema is None:
        reason = Reason("missing_field", f"field 'schema' is missing; {known}")
    elif not isinstance(schema, str):
        reason = Reason("wrong_type", f"schema is {_described(schema)}; {known}")
    elif schema == "alert/v1":
        reason = Reason("unknown_schema", "schema is \"alert/v1\": alerts are fundwatch's "
                        f"output, not an input event; {known}")
    else:
        reason = Reason("unknown_schema", f"schema is {_show(schema)}, which this version "
                        f"does not read; {known}")
    raise Rejected((reason,))


def _settlement(d: dict[str, Any], c: _Check) -> Settlement:
    # Each field: a quick test of the common valid shape inline, else the _Check method
    # that reports (see _Check). Reading top to bottom follows the contract's table.
    g = d.get

    v = g("settlement_id")
    settlement_id = v if v.__class__ is str and 0 < len(v) <= 64 else c.ident(d, "settlement_id")

    v = g("settled_at")
    settled_at = None
    if v.__class__ is str and _RFC3339.fullmatch(v):
        try:
            settled_at = _fromiso_dt(v)  # keeps the offset; truncates below microseconds
        except ValueError:
            pass
    if settled_at is None:
        c.datetime(d, "settled_at")

    v = g("person_id")
    person_id = v if v.__class__ is str and 0 < len(v) <= 128 else c.ident(d, "person_id")

    sex = v = g("sex")
    if not (v.__class__ is str and v in SEXES):
        sex = c.enum(d, "sex", SEXES)

    age = v = g("age")
    if not (v.__class__ is int and 0 <= v <= 130):
        age = c.age(d)

    insurance_type = v = g("insurance_type")
    if not (v.__class__ is str and v in INSURANCE_TYPES):
        insurance_type = c.enum(d, "insurance_type", INSURANCE_TYPES)

    insured_region = v = g("insured_region")
    if not (v.__class__ is str and _REGION.fullmatch(v)):
        insured_region = c.region(d, "insured_region")

    treatment_region = v = g("treatment_region")
    if not (v.__class__ is str and _REGION.fullmatch(v)):
        treatment_region = c.region(d, "treatment_region")

    v = g("institution_id")
    institution_id = (v if v.__class__ is str and 0 < len(v) <= 64
                      else c.ident(d, "institution_id"))

    institution_type = v = g("institution_type")
    if not (v.__class__ is str and v in INSTITUTION_TYPES):
        institution_type = c.enum(d, "institution_type", INSTITUTION_TYPES)

    institution_level = v = g("institution_level")  # absent reads as null
    if not (v is None or v.__class__ is int and 1 <= v <= 3):
        institution_level = c.level(v)
    if institution_level is not None and institution_type == "pharmacy":
        c.err("invalid_value", f"institution_level is {institution_level} for a pharmacy; "
              "pharmacies have no level, so send null (or leave it out)")

    chain_id = v = g("chain_id")
    if not (v is None or v.__class__ is str):
        chain_id = c.text_or_null(d, "chain_id")

    visit_type = v = g("visit_type")
    if not (v.__class__ is str and v in VISIT_TYPES):
        visit_type = c.enum(d, "visit_type", VISIT_TYPES)

    # Dates: absent is fine except for inpatients, where null also counts as absent.
    inpatient = visit_type == "inpatient"
    dates: list[date | None] = []
    for name in ("admitted_on", "discharged_on"):
        v = g(name, _MISSING)
        day = None
        if v is _MISSING or v is None and inpatient:
            pass
        elif v.__class__ is str and _ISO_DATE.fullmatch(v):
            try:
                day = _fromiso_d(v)
            except ValueError:
                c.date(name, v)
                day = _MISSING
        else:
            c.date(name, v)
            day = _MISSING
        dates.append(day)
    admitted_on, discharged_on = dates
    if inpatient and (admitted_on is None or discharged_on is None):
        absent = [n for n, x in (("admitted_on", admitted_on), ("discharged_on", discharged_on))
                  if x is None]
        c.err("inpatient_without_dates", "an inpatient settlement needs admitted_on and "
              f"discharged_on as dates YYYY-MM-DD; {' and '.join(absent)} "
              f"{'is' if len(absent) == 1 else 'are'} missing or null")
    if admitted_on.__class__ is date and discharged_on.__class__ is date \
            and discharged_on < admitted_on:  # type: ignore[operator]
        c.err("discharge_before_admission", f"discharged_on {discharged_on} is before "
              f"admitted_on {admitted_on}; expected discharge on or after admission")

    v = g("diagnoses")
    diagnoses = None
    if v.__class__ is list:
        for x in v:
            if x.__class__ is not str or _ICD10.fullmatch(x) is None:
                break
        else:
            diagnoses = tuple(v)
    if diagnoses is None:
        c.diagnoses(d)
    elif not diagnoses and visit_type not in (None, "pharmacy") \
            and institution_type not in (None, "pharmacy"):
        c.err("missing_diagnosis", f"diagnoses is empty for a {visit_type} visit; only "
              "pharmacy settlements may have no diagnosis (list the primary one first)")

    v = g("reverses")
    reversal = v is not None  # the sign rules follow even a malformed reverses
    reverses = v if v is None or v.__class__ is str and 0 < len(v) <= 64 else c.ident(
        d, "reverses", optional=True)
    if reverses is not None and reverses == settlement_id:
        c.err("invalid_value", f"reverses is {_show(reverses)}, this settlement's own id; a "
              "reversal names the earlier settlement it cancels")

    amounts: list[int | None] = []
    for name in ("total_cost", "fund_paid", "personal_paid"):
        v = g(name)
        fen = _quick_fen(v, c)
        if fen is None or (fen > 0 if reversal else fen < 0) or fen > _MAX_ABS_FEN \
                or fen < -_MAX_ABS_FEN:
            fen = c.money(v, name, allow_negative=False, reversal=reversal) \
                if c.required(d, name) is not _MISSING else None
        amounts.append(fen)
    total, fund, personal = amounts
    if total is not None and fund is not None and personal is not None \
            and fund + personal != total:
        c.err("amounts_do_not_add_up", f"fund_paid {fen_to_yuan_str(fund)} + personal_paid "
              f"{fen_to_yuan_str(personal)} = {fen_to_yuan_str(fund + personal)}, but "
              f"total_cost is {fen_to_yuan_str(total)}; they must add up to the fen")

    items = _items(d, c, reversal, total)

    filing = v = g("filing")
    if not (v.__class__ is str and v in FILINGS):
        filing = c.enum(d, "filing", FILINGS)

    if c.exact:
        c.unicode(d, ("settlement_id", "person_id", "institution_id", "chain_id", "reverses"))
    if c.errs:
        raise Rejected(c.errs)
    # Every value that is still None without being optional was reported above.
    # Positional (in field order) because it is measurably faster than keywords.
    return Settlement(
        SETTLEMENT_SCHEMA, settlement_id, settled_at, person_id, sex, age,  # type: ignore[arg-type]
        insurance_type, insured_region, treatment_region, institution_id,  # type: ignore[arg-type]
        institution_type, institution_level, chain_id, visit_type,  # type: ignore[arg-type]
        admitted_on, discharged_on, diagnoses, total, fund, personal,  # type: ignore[arg-type]
        items, filing, reverses,  # type: ignore[arg-type]
    )


def _items(d: dict[str, Any], c: _Check, reversal: bool,
           total: int | None) -> tuple[Item, ...] | None:
    v = d.get("items", _MISSING)
    if v is _MISSING:
        return None
    if v.__class__ is not list:
        extra = "; leave the field out when there are no cost lines" if v is None else ""
        c.err("wrong_type", f"items is {_described(v)}; expected a list of cost "
              f"lines{extra}")
        return None
    start = len(c.errs)
    items: list[Item] = []
    ok = True
    for i, it in enumerate(v):
        if it.__class__ is dict:
            cat = it.get("category")
            fen = _quick_fen(it.get("amount"), c)
            q = it.get("quantity")
            if cat.__class__ is str and cat in ITEM_CATEGORIES and fen is not None \
                    and (fen <= 0 if reversal else fen >= 0) and -_MAX_ABS_FEN <= fen \
                    <= _MAX_ABS_FEN and (q.__class__ is float or q is None and "quantity" not in it
                                         or q.__class__ is int and -2**53 <= q <= 2**53):
                items.append(Item(cat, fen, None if q is None else float(q)))
                continue
        if len(c.errs) - start >= _MAX_REPORTED_ITEM_PROBLEMS:
            last = c.errs[-1]
            c.errs[-1] = Reason(last.code, last.message + " (further problems in items not "
                                "listed)")
            return None
        item = c.item(it, i, reversal)
        if item is None:
            ok = False
        else:
            items.append(item)
    if not ok:
        return None
    if total is not None:
        s = sum(it.amount_fen for it in items)
        if s != total:
            c.err("items_do_not_add_up", f"the {len(items)} items sum to {fen_to_yuan_str(s)}, "
                  f"but total_cost is {fen_to_yuan_str(total)}; they must match to the fen")
    return tuple(items)


def _contribution(d: dict[str, Any], c: _Check) -> Contribution:
    g = d.get
    v = g("contribution_id")
    contribution_id = (v if v.__class__ is str and 0 < len(v) <= 64
                       else c.ident(d, "contribution_id"))

    v = g("received_at")
    received_at = None
    if v.__class__ is str and _RFC3339.fullmatch(v):
        try:
            received_at = _fromiso_dt(v)
        except ValueError:
            pass
    if received_at is None:
        c.datetime(d, "received_at")

    pool_region = v = g("pool_region")
    if not (v.__class__ is str and _REGION.fullmatch(v)):
        pool_region = c.region(d, "pool_region")

    insurance_type = v = g("insurance_type")
    if not (v.__class__ is str and v in INSURANCE_TYPES):
        insurance_type = c.enum(d, "insurance_type", INSURANCE_TYPES)

    source = v = g("source")
    if not (v.__class__ is str and v in SOURCES):
        source = c.enum(d, "source", SOURCES)

    # Only adjustment_out may be negative (either sign is accepted for it); with an
    # unreadable source the sign cannot be judged, and the source is reported anyway.
    may_be_negative = source in (None, "adjustment_out")
    v = g("amount")
    amount = _quick_fen(v, c)
    if amount is None or amount < 0 and not may_be_negative or not \
            -_MAX_ABS_FEN <= amount <= _MAX_ABS_FEN:
        amount = c.money(v, "amount", allow_negative=may_be_negative) \
            if c.required(d, "amount") is not _MISSING else None

    if c.exact:
        c.unicode(d, ("contribution_id",))
    if c.errs:
        raise Rejected(c.errs)
    return Contribution(
        schema=CONTRIBUTION_SCHEMA, contribution_id=contribution_id, received_at=received_at,
        pool_region=pool_region, insurance_type=insurance_type, amount_fen=amount,
        source=source,
    )  # type: ignore[arg-type]


# --------------------------------------------------------------------------- canonical


def to_canonical(event: Settlement | Contribution) -> dict[str, Any]:
    """The event as a contract record: amounts ``"123.40"``, RFC 3339 times, ISO dates.

    Optional fields that are absent (``admitted_on``, ``discharged_on``, ``items``,
    an item's ``quantity``) are left out, so the result validates against the schema;
    nullable ones (``institution_level``, ``chain_id``, ``reverses``) are always present.

    >>> ev = parse(b'{"schema": "contribution/v1", "contribution_id": "C1",'
    ...            b' "received_at": "2024-03-01T09:30:00+08:00", "pool_region": "440900",'
    ...            b' "insurance_type": "resident", "amount": 12.3, "source": "employer"}')
    >>> to_canonical(ev)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'schema': 'contribution/v1', 'contribution_id': 'C1',
     'received_at': '2024-03-01T09:30:00+08:00', 'pool_region': '440900',
     'insurance_type': 'resident', 'amount': '12.30', 'source': 'employer'}
    >>> from_canonical(to_canonical(ev)) == ev
    True
    """
    if isinstance(event, Contribution):
        return {
            "schema": event.schema,
            "contribution_id": event.contribution_id,
            "received_at": _iso(event.received_at),
            "pool_region": event.pool_region,
            "insurance_type": event.insurance_type,
            "amount": fen_to_yuan_str(event.amount_fen),
            "source": event.source,
        }
    d: dict[str, Any] = {
        "schema": event.schema,
        "settlement_id": event.settlement_id,
        "settled_at": _iso(event.settled_at),
        "person_id": event.person_id,
        "sex": event.sex,
        "age": event.age,
        "insurance_type": event.insurance_type,
        "insured_region": event.insured_region,
        "treatment_region": event.treatment_region,
        "institution_id": event.institution_id,
        "institution_type": event.institution_type,
        "institution_level": event.institution_level,
        "chain_id": event.chain_id,
        "visit_type": event.visit_type,
    }
    if event.admitted_on is not None:
        d["admitted_on"] = event.admitted_on.isoformat()
    if event.discharged_on is not None:
        d["discharged_on"] = event.discharged_on.isoformat()
    d["diagnoses"] = list(event.diagnoses)
    d["total_cost"] = fen_to_yuan_str(event.total_cost_fen)
    d["fund_paid"] = fen_to_yuan_str(event.fund_paid_fen)
    d["personal_paid"] = fen_to_yuan_str(event.personal_paid_fen)
    if event.items is not None:
        d["items"] = [
            {"category": it.category, "amount": fen_to_yuan_str(it.amount_fen)}
            if it.quantity is None else
            {"category": it.category, "amount": fen_to_yuan_str(it.amount_fen),
             "quantity": it.quantity}
            for it in event.items
        ]
    d["filing"] = event.filing
    d["reverses"] = event.reverses
    return d


def _canonical_fen(s: str) -> int:
    # Canonical amounts always have exactly two decimals: "-12.30" -> -1230.
    return int(s.replace(".", "", 1))


def from_canonical(d: dict[str, Any]) -> Settlement | Contribution:
    """Rebuild an event from :func:`to_canonical` output, trusting it (no validation).

    >>> from_canonical({"schema": "contribution/v1", "contribution_id": "C1",
    ...                 "received_at": "2024-03-01T00:00:00Z", "pool_region": "440900",
    ...                 "insurance_type": "employee", "amount": "-5.00",
    ...                 "source": "adjustment_out"}).amount_fen
    -500
    """
    fromiso = datetime.fromisoformat
    if d["schema"] == CONTRIBUTION_SCHEMA:
        return Contribution(d["schema"], d["contribution_id"], fromiso(d["received_at"]),
                            d["pool_region"], d["insurance_type"], _canonical_fen(d["amount"]),
                            d["source"])
    adm = d.get("admitted_on")
    dis = d.get("discharged_on")
    items = d.get("items")
    return Settlement(
        d["schema"], d["settlement_id"], fromiso(d["settled_at"]), d["person_id"], d["sex"],
        d["age"], d["insurance_type"], d["insured_region"], d["treatment_region"],
        d["institution_id"], d["institution_type"], d.get("institution_level"),
        d.get("chain_id"), d["visit_type"],
        None if adm is None else date.fromisoformat(adm),
        None if dis is None else date.fromisoformat(dis),
        tuple(d["diagnoses"]), _canonical_fen(d["total_cost"]), _canonical_fen(d["fund_paid"]),
        _canonical_fen(d["personal_paid"]),
        None if items is None else tuple(
            Item(it["category"], _canonical_fen(it["amount"]),
                 None if (q := it.get("quantity")) is None else float(q))
            for it in items),
        d["filing"], d.get("reverses"),
    )


def digest(event: Settlement | Contribution, canonical: dict[str, Any] | None = None) -> str:
    """Content hash (32 hex chars) of the canonical form with sorted keys.

    Times are hashed as UTC instants: the same moment written with another offset is
    the same content. Fractions of a second finer than microseconds are not kept.

    >>> a = parse(b'{"schema":"contribution/v1","contribution_id":"C1","amount":12.3,'
    ...           b'"received_at":"2024-03-01T08:00:00+08:00","pool_region":"440900",'
    ...           b'"insurance_type":"employee","source":"employer"}')
    >>> b = parse(b'{"source":"employer","insurance_type":"employee","pool_region":"440900",'
    ...           b'"received_at":"2024-03-01T00:00:00Z","amount":"12.30",'
    ...           b'"contribution_id":"C1","schema":"contribution/v1"}')
    >>> digest(a) == digest(b), len(digest(a))
    (True, 32)

    ``canonical``: the event's :func:`to_canonical` form, when the caller has it
    already (the live path ships it between stages); it is not modified.

    >>> digest(a, to_canonical(a)) == digest(a)
    True
    """
    d = dict(canonical) if canonical is not None else to_canonical(event)
    if isinstance(event, Contribution):
        d["received_at"] = _utc_iso(event.received_at)
    else:
        d["settled_at"] = _utc_iso(event.settled_at)
    return hashlib.blake2b(orjson.dumps(d, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).hexdigest()
