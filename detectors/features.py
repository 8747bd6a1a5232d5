"""Features of an inpatient settlement for phantom bed occupancy (挂床住院).

A phantom stay is billed as if the patient were in the bed while they are not: the
bill is long and made of bed-days and nursing with little exam or treatment, often
for a chronic, low-acuity condition, and the same person is meanwhile seen at a
clinic or a pharmacy somewhere else. The features describe one inpatient settlement
on those lines, as numbers an online model can learn from:

* the stay itself: length of stay (days, at least 1), cost per day (yuan), the
  shares of bed, drug, exam, treatment and nursing items in the total (0 when the
  settlement carries no cost lines), the weekday of admission (0 = Monday);
* where: the hospital's level (0 when unknown) and its beds from the pool registry
  (0 when the registry does not list it), whether the care was given outside the
  insured region;
* who: age;
* what the person did *elsewhere during the stay*: settlements at other
  institutions (outpatient, emergency, pharmacy) dated inside the stay, and on how
  many distinct days.

The last two need the person's history, which the caller keeps (a detector's state
keyed by person): compact entries made by :func:`history_entry`. Only entries
settled strictly *before* the inpatient settlement count — never what came after it,
even if it arrived earlier — so a replay and a live worker that saw records in
another order compute the same features.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> def at(day, hour=10):
...     return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+08:00")
>>> item = lambda c, yuan: E(category=c, amount_fen=yuan * 100, quantity=None)
>>> stay = E(settlement_id="S9", person_id="P1", visit_type="inpatient",
...          institution_id="H1", institution_level=1, age=71,
...          insured_region="440900", treatment_region="440900",
...          admitted_on=date(2025, 3, 3), discharged_on=date(2025, 3, 23),
...          settled_at=at("2025-03-23"), total_cost_fen=1_000_000,
...          items=(item("bed", 4000), item("nursing", 3000), item("drug", 2000),
...                 item("exam", 600), item("treatment", 400)))
>>> pharmacy = E(settlement_id="S5", institution_id="P77", visit_type="pharmacy",
...              settled_at=at("2025-03-10"))
>>> later = E(settlement_id="S12", institution_id="C3", visit_type="outpatient",
...           settled_at=at("2025-03-23", 15))   # after the settlement: never counted
>>> history = [history_entry(pharmacy), history_entry(later)]
>>> f = inpatient_features(stay, history)
>>> f["length_of_stay"], f["cost_per_day"], f["bed_share"], f["nursing_share"]
(20.0, 500.0, 0.4, 0.3)
>>> f["admit_weekday"], f["cross_region"], f["visits_elsewhere"], f["days_elsewhere"]
(0.0, 0.0, 1.0, 1.0)
>>> [round(v, 3) for v in vector(f)][:3]
[20.0, 500.0, 0.4]
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

#: Feature names, in the order :func:`vector` gives them.
FEATURES: tuple[str, ...] = (
    "length_of_stay", "cost_per_day", "bed_share", "drug_share", "exam_share",
    "treatment_share", "nursing_share", "level", "beds", "age", "admit_weekday",
    "cross_region", "visits_elsewhere", "days_elsewhere")

SHARE_OF = {"bed": "bed_share", "drug": "drug_share", "exam": "exam_share",
            "treatment": "treatment_share", "nursing": "nursing_share"}
ELSEWHERE = ("outpatient", "emergency", "pharmacy")
SHANGHAI = timezone(timedelta(hours=8))  # China has one time zone and no DST


def event_ms(event: Any) -> int:
    return int(event.settled_at.timestamp() * 1000)


def history_entry(event: Any) -> list:
    """What a person's history keeps of one settlement: ``[settled ms, settlement id,
    institution id, visit type, the id it reverses or None]`` — JSON-able, a few
    dozen bytes. A reversal (冲正) is kept as an entry of its own, not applied by
    deleting: whether it counts is then decided by its event time, not by whether it
    arrived before or after a stay was scored.

    >>> from datetime import datetime
    >>> from types import SimpleNamespace as E
    >>> history_entry(E(settlement_id="S1", institution_id="P7", visit_type="pharmacy",
    ...                 settled_at=datetime.fromisoformat("2025-03-10T08:00:00+08:00"),
    ...                 reverses=None))
    [1741564800000, 'S1', 'P7', 'pharmacy', None]
    """
    return [event_ms(event), event.settlement_id, event.institution_id, event.visit_type,
            getattr(event, "reverses", None)]


def reversed_before(history: Iterable[Sequence], until_ms: int) -> set[str]:
    """The ids reversed by reversals settled before ``until_ms``."""
    return {entry[4] for entry in history
            if len(entry) > 4 and entry[4] and entry[0] < until_ms}


def local_day(ms: int) -> date:
    """The calendar day (Asia/Shanghai) of an epoch-millisecond time."""
    return datetime.fromtimestamp(ms / 1000, SHANGHAI).date()


def elsewhere_during(history: Iterable[Sequence], until_ms: int, institution_id: str,
                     admitted_on: date, discharged_on: date,
                     settlement_id: str | None = None) -> list[Sequence]:
    """The person's settlements at other institutions dated inside the stay
    (``admitted_on``..``discharged_on``) and settled before ``until_ms`` (the stay's
    own settlement: what came after it is the future). Its own institution's bills
    are part of the stay's care."""
    history = list(history)
    gone = reversed_before(history, until_ms)  # reversed by then: as if never billed
    out = []
    for entry in history:
        ms, sid, institution, visit_type = entry[:4]
        if (ms < until_ms and visit_type in ELSEWHERE and institution != institution_id
                and sid != settlement_id and sid not in gone
                and not (len(entry) > 4 and entry[4])
                and admitted_on <= local_day(ms) <= discharged_on):
            out.append(entry)
    return out


def stay_features(stay: Any, institution: dict | None = None) -> dict[str, float]:
    """The features the settlement alone gives (everything but the history's)."""
    los = max(1, (stay.discharged_on - stay.admitted_on).days)
    total = stay.total_cost_fen
    f = {name: 0.0 for name in FEATURES}
    f["length_of_stay"] = float(los)
    f["cost_per_day"] = round(total / 100 / los, 2)
    if stay.items and total > 0:
        for item in stay.items:
            name = SHARE_OF.get(item.category)
            if name:
                f[name] += item.amount_fen / total
        for name in SHARE_OF.values():
            f[name] = round(f[name], 4)
    level = stay.institution_level or (institution or {}).get("level") or 0
    f["level"] = float(level)
    f["beds"] = float((institution or {}).get("beds") or 0)
    f["age"] = float(stay.age)
    f["admit_weekday"] = float(stay.admitted_on.weekday())
    f["cross_region"] = float(stay.insured_region != stay.treatment_region)
    return f


def with_history(features: dict[str, float], seen: Sequence[Sequence]) -> dict[str, float]:
    """``features`` completed with what :func:`elsewhere_during` found."""
    return {**features, "visits_elsewhere": float(len(seen)),
            "days_elsewhere": float(len({local_day(entry[0]) for entry in seen}))}


def inpatient_features(stay: Any, history: Iterable[Sequence] = (),
                       institution: dict | None = None) -> dict[str, float]:
    """The features of one inpatient settlement (see the module doc). ``history``:
    the person's :func:`history_entry` lists; ``institution``: the registry's entry
    for the hospital (``beds``, ``level``), when it has one."""
    seen = elsewhere_during(history, event_ms(stay), stay.institution_id, stay.admitted_on,
                            stay.discharged_on, stay.settlement_id)
    return with_history(stay_features(stay, institution), seen)


def model_input(f: dict[str, float], context: bool = False) -> dict[str, float]:
    """What the model is fed: lengths and costs on a log scale (their spread is
    multiplicative: a 40-day stay is as far from 10 days as 10 from 2.5), bed with
    nursing and exam with treatment as one share each (a phantom stay moves money
    from care to the bed, whichever line it uses), the weekday reduced to the
    Friday/Saturday admissions that audits single out, counts capped at 5.

    ``context`` adds who and where — hospital level, beds, age, cross-region care.
    Off by default: measured on the simulator (``bench/phantom_quality.py``), they
    lowered the ROC AUC (0.955 → 0.916 on two seeds): a half-space tree splits on
    features at random, and four dimensions that describe the setting, not what
    happened in the stay, take splits from those that do. They still describe the
    stay in an alert (its features and what stood out).

    >>> x = model_input({name: 1.0 for name in FEATURES})
    >>> print(*sorted(x))
    bed_nursing care cost_day drug los visit_days visits weekend_admit
    >>> round(x["los"], 3)
    0.693
    >>> sorted(set(model_input({name: 1.0 for name in FEATURES}, context=True)) - set(x))
    ['age', 'beds', 'cross_region', 'level']
    """
    x = {"los": math.log1p(f["length_of_stay"]), "cost_day": math.log1p(f["cost_per_day"]),
         "bed_nursing": f["bed_share"] + f["nursing_share"],
         "care": f["exam_share"] + f["treatment_share"], "drug": f["drug_share"],
         "visits": min(f["visits_elsewhere"], 5.0),
         "visit_days": min(f["days_elsewhere"], 5.0),
         "weekend_admit": float(f["admit_weekday"] in (4.0, 5.0))}
    if context:
        x.update(level=f["level"], beds=math.log1p(f["beds"]), age=f["age"],
                 cross_region=f["cross_region"])
    return x


def vector(features: dict[str, float]) -> list[float]:
    """The features as a list in :data:`FEATURES` order (what a checkpoint's journal
    stores: a dict's keys would be repeated in every entry)."""
    return [features[name] for name in FEATURES]


def as_dict(values: Sequence[float]) -> dict[str, float]:
    return dict(zip(FEATURES, values, strict=True))
