"""split_admission — discharged, then readmitted for the same condition within days (分解住院).

A hospital paid per stay (a DRG group, a per-admission quota, a cap on the length of
stay it may bill) can turn one course of care into two: it discharges the patient on
paper and admits them again a few days later for the same condition. The fund pays
two stays — often a second deductible threshold for the patient too — for one
illness. Each stay alone is unremarkable; the pair is the finding.

How it is decided (event time; dates as the settlements give them):

* Per person, the rule keeps the inpatient stays settled (institution, admission and
  discharge dates, primary diagnosis, amounts) for 180 days behind the person's
  newest settlement.
* Two stays of the person at the **same institution** with the **same primary
  diagnosis category** (the ICD-10 category: the first three characters, so I63.9
  and I63.5 are one condition), the second admitted 0 to ``max_gap_days`` days after
  the first was discharged (inclusive: 0 = readmitted the day of discharge), make a
  finding. Critical when the gap is at most ``critical_gap_days``.
* Not a finding: a readmission elsewhere (a referral or transfer), for another
  condition, later than ``max_gap_days``, a stay that overlaps the previous one at the
  same hospital (a double bill, not a split), and planned readmissions: the ICD-10
  categories in ``planned_categories`` (by default Z49 dialysis care and Z51
  chemotherapy or radiotherapy sessions, which are scheduled cycles).
* The second stay proves it whichever of the two settlements arrives first; the
  stays are judged when their settlement day closes (the event-time timer), in
  settlement-time order (:class:`~rules.builtin._stays.StaysJudgedAtTheClose`), so a
  reversal within the allowed lateness is applied in its place whatever the arrival
  order — a live worker and a replay give the same alerts. ``judge(state, stay)`` is
  the verdict on one stay (the examples below).
* **Alert identity**: one alert per pair of stays; ``window`` runs from the first
  admission (00:00) to the end of the second discharge day, Asia/Shanghai, so the
  same pair always gives the same ``alert_id``. Three stays in a row give one alert
  per pair that qualifies.
* **Reversals** (冲正): a reversed stay is taken out, and an alert it took part in is
  restated under the same id as ``info`` with ``evidence.withdrawn = true``. A
  re-delivered settlement changes nothing.
* **Regions**: the institution's region, then the person's insured region when it
  differs — a joint review: the treatment side reviews the two medical records (was
  the discharge justified), the insured side reviews what its pool paid twice.
  Per-province overrides use the insured (pool's) province.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> def stay(sid, adm, dis, dx="I63.9", inst="H440900002", reverses=None):
...     sign = -1 if reverses else 1
...     return E(kind="settlement", settlement_id=sid, person_id="P7",
...              visit_type="inpatient", institution_id=inst, treatment_region="440900",
...              insured_region="440900", admitted_on=date.fromisoformat(adm),
...              discharged_on=date.fromisoformat(dis), diagnoses=(dx,),
...              total_cost_fen=sign * 800000, fund_paid_fen=sign * 600000,
...              reverses=reverses,
...              settled_at=datetime.fromisoformat(dis + "T10:00:00+08:00"))
>>> rule = SplitAdmission()
>>> state, _ = rule.judge(None, stay("S1", "2025-03-01", "2025-03-08"))
>>> state, alerts = rule.judge(state, stay("S2", "2025-03-10", "2025-03-16", dx="I63.5"))
>>> a = alerts[0]
>>> a["severity"], a["review"], a["regions"], a["evidence"]["gap_days"]
('warning', 'single', ['440900'], 2)
>>> a["window"]["start"][:10], a["window"]["end"][:10]
('2025-03-01', '2025-03-17')
>>> rule.judge(state, stay("S3", "2025-03-20", "2025-03-25", dx="S72.0"))[1]  # another condition
[]
>>> rule.judge(state, stay("S4", "2025-04-05", "2025-04-09"))[1]   # 20 days later
[]
>>> rule.judge(state, stay("S5", "2025-03-17", "2025-03-20", inst="H440900001"))[1]  # elsewhere
[]
"""
from __future__ import annotations

import re

from rules.alerts import iso, make_alert
from rules.builtin._stays import (
    StaysJudgedAtTheClose,
    STAY_ADMITTED,
    STAY_DIAGNOSIS,
    STAY_DISCHARGED,
    STAY_FUND,
    STAY_INSTITUTION,
    STAY_INSURED,
    STAY_REGION,
    STAY_SETTLED,
    add_stay,
    day_start,
    days_between,
    next_day,
    person_regions,
    stay_evidence,
    take_back,
)
from rules.core import Param, RuleConfigError
from streams.records import fen_to_yuan_str

CATEGORY = re.compile(r"[A-Z][0-9]{2}")


def category(diagnosis: str) -> str:
    """The ICD-10 category of a code: ``I63.9`` → ``I63``."""
    return diagnosis[:3].upper()


class SplitAdmission(StaysJudgedAtTheClose):
    rule_id = "split_admission"
    description = ("Discharge and readmission at the same institution with the same "
                   "primary diagnosis category within days (分解住院)")
    subject_kind = "person"
    key_kind = "person"
    params = {
        "max_gap_days": Param(int, 15, "days from discharge to readmission (inclusive) "
                              "within which a readmission for the same condition is a "
                              "split", minimum=0, maximum=60),
        "critical_gap_days": Param(int, 1, "gap in days at or below which the alert is "
                                   "critical (readmitted the same or the next day)",
                                   minimum=0, maximum=60),
        "planned_categories": Param(str, "Z49,Z51", "comma-separated ICD-10 categories "
                                    "of planned readmissions that are never a split "
                                    "(dialysis care, chemotherapy or radiotherapy "
                                    "sessions)"),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for values in (self.p, *self._by_province.values()):
            for code in filter(None, (c.strip() for c in
                                      values["planned_categories"].split(","))):
                if not CATEGORY.fullmatch(code.upper()):
                    raise RuleConfigError(f"rules.{self.rule_id}.planned_categories: "
                                          f"{code!r} is not an ICD-10 category like 'Z51'")

    def _planned(self, province: str) -> set[str]:
        return {c.strip().upper() for c in self.param("planned_categories", province)
                .split(",") if c.strip()}

    def _pair(self, a: list, b: list) -> tuple[list, list, int] | None:
        """(first, second, gap days) when the two stays are a split."""
        if a[STAY_INSTITUTION] != b[STAY_INSTITUTION] or not a[STAY_DIAGNOSIS] \
                or category(a[STAY_DIAGNOSIS]) != category(b[STAY_DIAGNOSIS]):
            return None
        first, second = sorted((a, b), key=lambda r: (r[STAY_ADMITTED], r[STAY_DISCHARGED]))
        gap = days_between(first[STAY_DISCHARGED], second[STAY_ADMITTED])
        province = second[STAY_INSURED][:2]
        if gap < 0 or gap > self.param("max_gap_days", province):
            return None
        if category(first[STAY_DIAGNOSIS]) in self._planned(province):
            return None
        return first, second, gap

    def judge(self, state, event):
        if event.reverses:
            new, gone = take_back(state, event)
            if new is None:
                return state, []
            found = [(sid, p) for sid, row in new["stays"].items() if (p := self._pair(gone, row))]
            return new, [self._alert(new["person"], *self._named(p, event.reverses, gone, sid,
                                                                 new["stays"][sid]),
                                     withdrawn=(event.reverses, iso(event.settled_at)))
                         for sid, p in sorted(found)]
        new = add_stay(state, event)
        if new is None:
            return state, []
        mine = new["stays"].get(event.settlement_id)
        if mine is None:
            return new, []
        alerts = []
        for sid, row in sorted(new["stays"].items()):
            if sid != event.settlement_id and (p := self._pair(mine, row)):
                alerts.append(self._alert(new["person"], *self._named(
                    p, event.settlement_id, mine, sid, row)))
        return new, alerts

    @staticmethod
    def _named(pair, sid_a, row_a, sid_b, row_b):
        """The pair's (first, second) as (settlement id, row), and the gap."""
        first, _, gap = pair
        if first is row_a:
            return (sid_a, row_a), (sid_b, row_b), gap
        return (sid_b, row_b), (sid_a, row_a), gap

    def _alert(self, person: str, first: tuple, second: tuple, gap: int,
               withdrawn: tuple[str, str] | None = None) -> dict:
        (s1, r1), (s2, r2) = first, second
        province = r2[STAY_INSURED][:2]
        critical_gap = self.param("critical_gap_days", province)
        max_gap = self.param("max_gap_days", province)
        institution = r1[STAY_INSTITUTION]
        insured = r2[STAY_INSURED]
        regions = person_regions([r1], insured)
        fund = r1[STAY_FUND] + r2[STAY_FUND]
        window = {"start": day_start(r1[STAY_ADMITTED]),
                  "end": day_start(next_day(r2[STAY_DISCHARGED]))}
        cat = category(r1[STAY_DIAGNOSIS])
        evidence = {
            "person_id": person, "insured_region": insured, "institution_id": institution,
            "withdrawn": withdrawn is not None, "diagnosis_category": cat,
            "discharged_on": r1[STAY_DISCHARGED], "readmitted_on": r2[STAY_ADMITTED],
            "gap_days": gap, "fund_paid": fen_to_yuan_str(fund),
            "stays": [stay_evidence(s1, r1), stay_evidence(s2, r2)],
            "max_gap_days": max_gap, "critical_gap_days": critical_gap}
        review = "joint" if len(regions) > 1 else "single"
        if withdrawn is not None:
            reversed_id, reversed_at = withdrawn
            evidence["reversed"] = [reversed_id]
            return make_alert(
                self.rule_id, "info", "person", person, regions=regions, window=window,
                detected_at=reversed_at,
                summary=(f"{person}: withdrawn — stay {reversed_id} at {institution} was "
                         "reversed (冲正), so the readmission is no longer a split"),
                evidence=evidence, settlement_ids=[s1, s2], review=review)
        duties = {r1[STAY_REGION]: (
            f"Review {institution}'s medical records of both stays: was {person} fit for "
            f"discharge on {r1[STAY_DISCHARGED]}, or is the readmission on "
            f"{r2[STAY_ADMITTED]} the same course of care (分解住院)")}
        if insured != r1[STAY_REGION]:
            duties[insured] = (f"Review the two payments for {person} from the pool (a "
                               "second deductible and per-stay payment) and recover the "
                               "split if the treatment side confirms it")
        return make_alert(
            self.rule_id, "critical" if gap <= critical_gap else "warning", "person",
            person, regions=regions, window=window,
            detected_at=max(r1[STAY_SETTLED], r2[STAY_SETTLED]),
            summary=(f"{person}: discharged from {institution} on {r1[STAY_DISCHARGED]} and "
                     f"readmitted {gap} day(s) later on {r2[STAY_ADMITTED]} for the same "
                     f"condition ({cat}); fund paid ¥{fen_to_yuan_str(fund)} for the two "
                     "stays"),
            evidence=evidence, settlement_ids=[s1, s2], review=review, duties=duties)
