"""unfiled_cross_region — cross-region inpatient care without a filing (未备案).

Cross-region settlement requires a filing (异地就医备案: temporary or long-term;
emergencies are exempt). An institution that keeps admitting patients from other
pools with no filing either bypasses the filing check or bills for people it
never saw; its own supervision center is asked to inspect it.

Counted per institution and calendar month (Asia/Shanghai, event time). The
alert fires when the month's count reaches ``min_settlements`` and is updated —
same ``alert_id`` — as more arrive, turning critical at ``critical_settlements``.
A reversal (冲正) takes its original out of the count again.

>>> from datetime import datetime, date
>>> from types import SimpleNamespace as E
>>> rule = UnfiledCrossRegion(min_settlements=2)
>>> def stay(i): return E(settlement_id=f"S{i}", institution_id="H440100001",
...     visit_type="inpatient", filing="none", is_cross_region=True, reverses=None,
...     insured_region="440900", treatment_region="440100", fund_paid_fen=100000,
...     settled_at=datetime.fromisoformat(f"2025-03-0{i}T10:00:00+08:00"))
>>> state, alerts = rule.apply(None, stay(1))
>>> alerts
[]
>>> state, alerts = rule.apply(state, stay(2))
>>> alerts[0]["severity"], alerts[0]["evidence"]["settlement_count"]
('warning', 2)
>>> rule.apply(state, stay(2))[1]   # a re-delivered settlement changes nothing
[]
"""
from __future__ import annotations

from collections import Counter

from rules.alerts import iso, make_alert, month_of, month_window, previous_month
from rules.core import Param, Rule
from streams.records import fen_to_yuan_str

# Months kept in state behind the newest one seen: late events within this reach
# still count; older months are released so state stays bounded.
KEEP_MONTHS = 3


class UnfiledCrossRegion(Rule):
    rule_id = "unfiled_cross_region"
    description = ("Cross-region inpatient settlements without a filing (未备案) at one "
                   "institution in a calendar month")
    subject_kind = "institution"
    key_kind = "institution"
    params = {
        "min_settlements": Param(int, 5, "unfiled cross-region inpatient settlements in a "
                                 "month that raise a warning", minimum=1),
        "critical_settlements": Param(int, 20, "count at which the alert becomes critical",
                                      minimum=1),
    }

    def wants(self, event):
        return getattr(event, "visit_type", None) == "inpatient"

    def apply(self, state, event):
        if getattr(event, "visit_type", None) != "inpatient":
            return state, []
        if event.reverses:
            return self._reverse(state, event)
        if event.filing != "none" or not event.is_cross_region:
            return state, []
        month = month_of(event.settled_at)
        months = dict((state or {}).get("months", {}))
        entry = months.get(month, {"ids": {}, "reversed": []})
        sid = event.settlement_id
        if sid in entry["ids"] or sid in entry["reversed"]:
            return state, []  # re-delivered: already counted (or already reversed)
        ids = dict(entry["ids"])
        ids[sid] = [event.fund_paid_fen, event.insured_region, event.treatment_region,
                    iso(event.settled_at)]
        months[month] = {"ids": ids, "reversed": entry["reversed"]}
        newest = max(months)
        months = {m: v for m, v in months.items() if m >= previous_month(newest, KEEP_MONTHS)}
        new_state = {"months": months}
        return new_state, self._alerts(event.institution_id, month, months.get(month))

    def _reverse(self, state, reversal):
        """Take the reversed settlement out of its month and restate the alert."""
        original_id = reversal.reverses
        months = dict((state or {}).get("months", {}))
        for month, entry in months.items():
            if original_id in entry["ids"]:
                ids = {k: v for k, v in entry["ids"].items() if k != original_id}
                months[month] = {"ids": ids, "reversed": [*entry["reversed"], original_id]}
                # Below the threshold the alert is restated too, as info: the store
                # keeps the history, and the center sees the count fell back.
                return {"months": months}, self._alerts(reversal.institution_id, month,
                                                        months[month], restate=True)
        return state, []

    def _alerts(self, institution_id: str, month: str, entry: dict | None,
                restate: bool = False):
        count = len(entry["ids"]) if entry else 0
        if count == 0:
            return []
        rows = entry["ids"].values()
        # Thresholds are the institution's province's (the treatment side).
        province = next(iter(rows))[2][:2]
        minimum = self.param("min_settlements", province)
        critical = self.param("critical_settlements", province)
        if count < minimum and not (restate and count + len(entry["reversed"]) >= minimum):
            return []
        if count >= critical:
            severity = "critical"
        elif count >= minimum:
            severity = "warning"
        else:
            severity = "info"
        fund_fen = sum(r[0] for r in rows)
        insured = Counter(r[1] for r in rows)
        treatment_region = Counter(r[2] for r in rows).most_common(1)[0][0]
        detected_at = max(r[3] for r in rows)
        return [make_alert(
            self.rule_id, severity, "institution", institution_id,
            regions=[treatment_region],
            window=month_window(month),
            detected_at=detected_at,
            summary=(f"{institution_id}: {count} cross-region inpatient settlements without "
                     f"a filing in {month}, fund paid ¥{fen_to_yuan_str(fund_fen)}"),
            evidence={
                "month": month,
                "settlement_count": count,
                "fund_paid": fen_to_yuan_str(fund_fen),
                "insured_regions": dict(sorted(insured.items())),
                "min_settlements": minimum,
                "critical_settlements": critical,
            },
            settlement_ids=entry["ids"].keys(),
        )]
