"""Valid contract records for tests: ``settlement(**overrides)``, ``contribution(**overrides)``.

The defaults are a plain, valid record: a settlement is an inpatient stay at a
tertiary hospital in Guangzhou by a Guangzhou resident-insurance patient, with cost
items; a contribution is an employer payment into the Guangzhou employee pool. Every
call without an explicit id gets a fresh one, so records never collide by accident.

Overrides replace fields; ``OMIT`` removes one. A few conveniences keep the record
valid when you change one thing:

* overriding any of the three amounts without ``items`` drops the default items (they
  would no longer sum to the total), and a missing ``total_cost`` is computed as
  ``fund_paid + personal_paid``;
* ``visit_type`` other than inpatient without dates drops the default dates;
* ``institution_type="pharmacy"`` without a level sets ``institution_level`` to null.

Cross-region is a matter of overrides::

    settlement(insured_region="440900", treatment_region="440100", filing="long_term")

>>> from streams.records import parse
>>> parse(dumps(settlement(settlement_id="S1"))).is_cross_region
False
>>> parse(dumps(settlement(insured_region="440900", filing="temporary"))).is_cross_region
True
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["D0", "OMIT", "at", "bill", "contribution", "dumps", "reversal_of", "settlement",
           "weeks"]


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: Pass as an override value to leave the field out of the record.
OMIT: Any = _Omit()

_ids = itertools.count(1)

_AMOUNTS = ("total_cost", "fund_paid", "personal_paid")


def _apply(record: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not OMIT}


def settlement(**overrides: Any) -> dict[str, Any]:
    """A valid settlement/v1 record (a dict), with ``overrides`` applied."""
    n = next(_ids)
    record: dict[str, Any] = {
        "schema": "settlement/v1",
        "settlement_id": f"S-{n:06d}",
        "settled_at": "2025-03-10T09:30:00+08:00",
        "person_id": f"P-{n:06d}",
        "sex": "F",
        "age": 67,
        "insurance_type": "resident",
        "insured_region": "440100",
        "treatment_region": "440100",
        "institution_id": "H440100001",
        "institution_type": "hospital",
        "institution_level": 3,
        "chain_id": None,
        "visit_type": "inpatient",
        "admitted_on": "2025-03-05",
        "discharged_on": "2025-03-10",
        "diagnoses": ["I21.9", "E11.9"],
        "total_cost": "12345.60",
        "fund_paid": "9876.48",
        "personal_paid": "2469.12",
        "items": [
            {"category": "bed", "amount": "500.00", "quantity": 5},
            {"category": "drug", "amount": "6845.60"},
            {"category": "exam", "amount": "5000.00", "quantity": 2.5},
        ],
        "filing": "none",
        "reverses": None,
    }
    if any(k in overrides for k in _AMOUNTS) and "items" not in overrides:
        del record["items"]
        if "total_cost" not in overrides and "fund_paid" in overrides \
                and "personal_paid" in overrides:
            total = Decimal(str(overrides["fund_paid"])) + Decimal(str(overrides["personal_paid"]))
            overrides = {**overrides, "total_cost": f"{total:.2f}"}
    if overrides.get("visit_type", "inpatient") != "inpatient":
        for k in ("admitted_on", "discharged_on"):
            if k not in overrides:
                del record[k]
    if overrides.get("institution_type") == "pharmacy" and "institution_level" not in overrides:
        record["institution_level"] = None
    return _apply(record, overrides)


def contribution(**overrides: Any) -> dict[str, Any]:
    """A valid contribution/v1 record (a dict), with ``overrides`` applied."""
    n = next(_ids)
    record: dict[str, Any] = {
        "schema": "contribution/v1",
        "contribution_id": f"C-{n:06d}",
        "received_at": "2025-03-01T00:00:00+08:00",
        "pool_region": "440100",
        "insurance_type": "employee",
        "amount": "50000.00",
        "source": "employer",
    }
    return _apply(record, overrides)


def _negate(amount: Any) -> Any:
    if isinstance(amount, str):
        return amount[1:] if amount.startswith("-") else "-" + amount
    return -amount


def reversal_of(original: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A valid reversal (冲正) of the settlement record ``original``.

    >>> r = reversal_of(settlement(settlement_id="S1"), settlement_id="S1-R")
    >>> r["reverses"], r["total_cost"], r["items"][0]["amount"]
    ('S1', '-12345.60', '-500.00')
    """
    record = {**original, "settlement_id": f"{original['settlement_id']}-R{next(_ids)}",
              "reverses": original["settlement_id"]}
    for k in _AMOUNTS:
        record[k] = _negate(original[k])
    if original.get("items"):
        record["items"] = [{**it, "amount": _negate(it["amount"])} for it in original["items"]]
    return _apply(record, overrides)


def dumps(record: Any) -> bytes:
    """The record as one JSON line's bytes (no newline)."""
    return orjson.dumps(record)


# ------------------------------------------------------ weeks of cross-province bills
# For the surge rule: an institution's bills day by day from Monday D0.

D0 = date(2025, 3, 3)  # a Monday


def at(day: int, hour: int = 10) -> str:
    return f"{(D0 + timedelta(days=day)).isoformat()}T{hour:02d}:00:00+08:00"


def bill(day: int, yuan: float, *, inst: str = "H440900001", treat: str = "440900",
         insured: str = "450100", hour: int = 10, sid: str | None = None,
         person: str | None = None, **extra):
    """A cross-province outpatient bill of ``yuan`` at an institution, on day ``day``
    after Monday ``D0`` (the insured and treatment regions make it local or not)."""
    fund = round(yuan * 0.6, 2)
    rec = settlement(settlement_id=sid or f"{inst}-{day}-{hour}-{insured}",
                     settled_at=at(day, hour), person_id=person or f"P{insured}-{day % 5}",
                     insured_region=insured, treatment_region=treat, institution_id=inst,
                     visit_type="outpatient", diagnoses=["I10"], total_cost=f"{yuan:.2f}",
                     fund_paid=f"{fund:.2f}", personal_paid=f"{yuan - fund:.2f}",
                     filing="temporary" if insured != treat else "none", **extra)
    return rec


def weeks(base: float, surge: float, *, surge_days=range(35, 42), first_day: int = 0,
          close_day: int = 42, per_day: int = 2, **kw):
    """``per_day`` bills a day at ``base`` yuan each (``surge`` on the surge days), then a
    local bill on ``close_day`` that moves the watermark past the days before."""
    out = []
    for day in range(first_day, close_day):
        for k in range(per_day):
            out.append(bill(day, surge if day in surge_days else base, hour=9 + k, **kw))
    inst, treat = kw.get("inst", "H440900001"), kw.get("treat", "440900")
    out.append(bill(close_day, 100, inst=inst, treat=treat, insured=treat, hour=9))
    return out
