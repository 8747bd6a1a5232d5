"""overlapping_stay — the same person inpatient at two institutions at once.

A person sleeps in one bed a night. Two inpatient stays of one person at two
institutions that share a night mean that at least one of them is not what it says:
a phantom stay (挂床住院) billed while the patient is elsewhere, an insurance card used
by someone else (冒名住院), or an admission kept open after the patient left. Each
settlement alone looks ordinary, and when the two hospitals lie in different regions
no single supervision center sees both: this rule joins them on the person.

How it is decided (event time; dates as the settlements give them):

* Per person, the rule keeps the inpatient stays settled (admission and discharge
  dates, institution, amounts) for 180 days behind the person's newest settlement.
* A stay occupies the nights from its admission to the day before its discharge.
  Two stays at *different* institutions overlap by ``min(discharge) - max(admission)``
  nights; at least ``min_overlap_nights`` make a finding. A same-day transfer
  (discharged from one hospital and admitted to the next on the same date) shares a
  date but no night, so it is not one; two stays at the same institution are a
  double bill, not this finding.
* The second settlement proves the overlap, whichever of the two arrives first; the
  stays are judged when their settlement day closes (the event-time timer), in
  settlement-time order (:class:`~rules.builtin._stays.StaysJudgedAtTheClose`), so
  that a reversal within the allowed lateness is applied in its place whatever the
  order records reached the worker in — a live worker and a replay give the same
  alerts. ``judge(state, stay)`` is the verdict on one stay (the examples below).
* **Alert identity**: one alert per overlap span — ``window`` runs from the later
  admission (00:00) to the earlier discharge (00:00), Asia/Shanghai — so the same two
  stays always give the same ``alert_id``, in any order. Critical from
  ``critical_overlap_nights`` shared nights.
* **Reversals** (冲正): a reversed stay is taken out; an alert it made is restated
  under the same id as ``info`` with ``evidence.withdrawn = true`` (the store keeps
  the history, the centers see it was corrected). A re-delivered settlement changes
  nothing.
* **Regions**: each institution's region, then the person's insured region. When
  more than one region is named the review is joint (双地联查): each treatment side
  checks its ward's records for the nights in question, the insured side verifies
  the person's enrolment and identity. Per-province overrides use the insured
  (pool's) province.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> def stay(sid, inst, region, adm, dis, reverses=None):
...     sign = -1 if reverses else 1
...     return E(kind="settlement", settlement_id=sid, person_id="P1",
...              visit_type="inpatient", institution_id=inst, treatment_region=region,
...              insured_region="440900", admitted_on=date.fromisoformat(adm),
...              discharged_on=date.fromisoformat(dis), diagnoses=("I63.9",),
...              total_cost_fen=sign * 1200000, fund_paid_fen=sign * 900000,
...              reverses=reverses,
...              settled_at=datetime.fromisoformat(dis + "T10:00:00+08:00"))
>>> rule = OverlappingStay()
>>> state, alerts = rule.judge(None, stay("S1", "H440900002", "440900", "2025-03-01",
...                                         "2025-03-12"))
>>> alerts
[]
>>> state, alerts = rule.judge(state, stay("S2", "H440100001", "440100", "2025-03-09",
...                                          "2025-03-15"))
>>> a = alerts[0]
>>> a["severity"], a["review"], a["regions"], a["evidence"]["overlap_nights"]
('critical', 'joint', ['440900', '440100'], 3)
>>> a["window"]["start"][:10], a["window"]["end"][:10]
('2025-03-09', '2025-03-12')
>>> # transferred on the day of discharge: a shared date, no shared night
>>> rule.judge(state, stay("S3", "H440100003", "440100", "2025-03-15", "2025-03-20"))[1]
[]
>>> _, alerts = rule.judge(state, stay("R1", "H440100001", "440100", "2025-03-09",
...                                      "2025-03-15", reverses="S2"))
>>> b = alerts[0]   # S2 reversed (冲正): the same alert, restated as withdrawn
>>> b["alert_id"] == a["alert_id"], b["severity"], b["evidence"]["withdrawn"]
(True, 'info', True)
>>> # Live, records are held until their day closes, then judged in settlement order:
>>> held, _ = rule.apply(None, stay("S2", "H440100001", "440100", "2025-03-09", "2025-03-15"))
>>> held, _ = rule.apply(held, stay("S1", "H440900002", "440900", "2025-03-01", "2025-03-12"))
>>> rule.close(held, datetime.fromisoformat("2025-03-15T00:00:00+08:00"))[1]  # S2's day open
[]
>>> [x["alert_id"] for x in rule.close(held, datetime.fromisoformat(
...     "2025-03-16T00:00:00+08:00"))[1]] == [a["alert_id"]]
True
"""
from __future__ import annotations

from rules.alerts import iso, make_alert
from rules.builtin._stays import (
    StaysJudgedAtTheClose,
    STAY_ADMITTED,
    STAY_DISCHARGED,
    STAY_FUND,
    STAY_INSTITUTION,
    STAY_INSURED,
    STAY_REGION,
    STAY_SETTLED,
    add_stay,
    day_start,
    days_between,
    ordered,
    person_regions,
    stay_evidence,
    take_back,
)
from rules.core import Param
from streams.records import fen_to_yuan_str


def _overlap(a: list, b: list) -> tuple[str, str, int] | None:
    """(first shared night, morning after the last, nights) of two stays at two
    institutions, or None."""
    if a[STAY_INSTITUTION] == b[STAY_INSTITUTION]:
        return None
    first = max(a[STAY_ADMITTED], b[STAY_ADMITTED])
    end = min(a[STAY_DISCHARGED], b[STAY_DISCHARGED])
    nights = days_between(first, end)
    return (first, end, nights) if nights > 0 else None


class OverlappingStay(StaysJudgedAtTheClose):
    rule_id = "overlapping_stay"
    description = ("The same person inpatient at two institutions on overlapping dates "
                   "(at least one of the stays is not real)")
    subject_kind = "person"
    key_kind = "person"
    params = {
        "min_overlap_nights": Param(int, 1, "nights two stays at different institutions "
                                    "must share to raise an alert", minimum=1),
        "critical_overlap_nights": Param(int, 3, "shared nights from which the alert is "
                                         "critical", minimum=1),
    }

    def judge(self, state, event):
        if event.reverses:
            new, gone = take_back(state, event)
            if new is None:
                return state, []
            spans = {o[:2] for row in new["stays"].values() if (o := _overlap(gone, row))}
            return new, [self._alert(new, span, withdrawn=(event.reverses, gone,
                                                           event.settled_at))
                         for span in sorted(spans)]
        new = add_stay(state, event)
        if new is None:
            return state, []
        mine = new["stays"].get(event.settlement_id)
        if mine is None:
            return new, []  # discharged before the horizon: nothing left to pair with
        spans = {o[:2] for sid, row in new["stays"].items()
                 if sid != event.settlement_id and (o := _overlap(mine, row))}
        alerts = [self._alert(new, span) for span in sorted(spans)]
        return new, [a for a in alerts if a is not None]

    def _alert(self, st: dict, span: tuple[str, str], withdrawn=None) -> dict | None:
        """The alert of one overlap span, from every pair of stays that share exactly
        it (so the verdict does not depend on the order the stays arrived in)."""
        first, end = span
        rows = st["stays"]
        nights = days_between(first, end)
        some = withdrawn[1] if withdrawn else next(iter(rows.values()))
        insured_province = some[STAY_INSURED][:2]
        minimum = self.param("min_overlap_nights", insured_province)
        critical = self.param("critical_overlap_nights", insured_province)
        involved: dict[str, list] = {}
        items = list(rows.items())
        for i, (sa, a) in enumerate(items):
            for sb, b in items[i + 1:]:
                o = _overlap(a, b)
                if o and o[:2] == span:
                    involved[sa], involved[sb] = a, b
        person = st["person"]
        if nights < minimum:
            return None  # never alerted, so nothing to restate either
        if not involved:
            if withdrawn is None:
                return None
            # What is left of the finding after the reversal: the restated alert says
            # which stay was taken back and which still stands.
            sid, row, when = withdrawn
            standing = {k: v for k, v in rows.items()
                        if v[STAY_ADMITTED] <= first and v[STAY_DISCHARGED] >= end}
            shown = ordered({**standing, sid: row})
            regions = person_regions([r for _, r in shown], row[STAY_INSURED])
            return make_alert(
                self.rule_id, "info", "person", person, regions=regions,
                window={"start": day_start(first), "end": day_start(end)},
                detected_at=iso(when),
                summary=(f"{person}: withdrawn — stay {sid} at {row[STAY_INSTITUTION]} was "
                         f"reversed (冲正); no overlapping stay remains for {first}..{end}"),
                evidence={"person_id": person, "withdrawn": True, "reversed": [sid],
                          "overlap": {"from": first, "to": end}, "overlap_nights": nights,
                          "stays": [stay_evidence(k, v) for k, v in shown]},
                settlement_ids=[k for k, _ in shown],
                review="joint" if len(regions) > 1 else "single")
        shown = ordered(involved)
        stay_rows = [r for _, r in shown]
        insured = stay_rows[-1][STAY_INSURED]
        regions = person_regions(stay_rows, insured)
        fund = sum(r[STAY_FUND] for r in stay_rows)
        institutions = list(dict.fromkeys(r[STAY_INSTITUTION] for r in stay_rows))
        duties = {}
        for region in regions:
            here = [i for i in institutions
                    if any(r[STAY_INSTITUTION] == i and r[STAY_REGION] == region
                           for r in stay_rows)]
            tasks = []
            if here:
                tasks.append(f"check the ward records of {', '.join(here)} (bed register, "
                             f"nursing notes, orders) for {person} on the {nights} night(s) "
                             f"from {first} to the morning of {end}: was the patient in the "
                             "bed")
            if region == insured:
                tasks.append(f"verify {person}'s enrolment and identity (a card used by "
                             "someone else, 冒名住院) and hold the payment for the shared "
                             "nights until the treatment side reports")
            duty = "; ".join(tasks)
            duties[region] = duty[0].upper() + duty[1:]
        described = "; ".join(f"{r[STAY_INSTITUTION]} {r[STAY_ADMITTED]}..{r[STAY_DISCHARGED]}"
                              for r in stay_rows)
        return make_alert(
            self.rule_id, "critical" if nights >= critical else "warning", "person", person,
            regions=regions,
            window={"start": day_start(first), "end": day_start(end)},
            detected_at=max(r[STAY_SETTLED] for r in stay_rows),
            summary=(f"{person}: inpatient at {len(institutions)} institutions at once "
                     f"({described}), {nights} night(s) shared from {first}; fund paid "
                     f"¥{fen_to_yuan_str(fund)}"),
            evidence={"person_id": person, "insured_region": insured, "withdrawn": False,
                      "overlap": {"from": first, "to": end}, "overlap_nights": nights,
                      "institutions": institutions, "fund_paid": fen_to_yuan_str(fund),
                      "stays": [stay_evidence(k, v) for k, v in shown],
                      "min_overlap_nights": minimum, "critical_overlap_nights": critical},
            settlement_ids=[k for k, _ in shown],
            review="joint" if len(regions) > 1 else "single", duties=duties)
