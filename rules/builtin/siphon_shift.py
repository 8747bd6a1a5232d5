"""siphon_shift — a pool's inpatients moving to the capital's tertiary hospitals (虹吸效应).

Once care anywhere in the province pays the same, patients flow to the capital's
level-3 hospitals: their spending grows and the county hospitals empty. Several
provinces name this the main risk of provincial pooling. The rule watches each
*insured* pool (``<region>:<insurance_type>``) outside the capital.

How it is measured (event time, Asia/Shanghai calendar months of ``settled_at``):

* Per pool and month: the pool's insured persons' inpatient settlements (stays,
  anywhere), how many of them were at a level-3 hospital in the capital region of
  the pool's province, and the fund payments of both (``fund_paid``).
* The capital comes from the pool registry (``registry.capital_of(region)``:
  the province's ``capital`` or its pool marked ``capital: true``). **Without a
  registry, or when it names no capital for the province, the rule does
  nothing**; the capital's own pools are not judged either (their care in the
  capital is local care).
* **Judged once, when the month is complete**: when the stream's watermark
  (``streams.watermark``) passes the first midnight of the next month, the
  drivers call ``close``. **Alert** when the month's share of stays in the
  capital's tertiary hospitals exceeds the mean of the three preceding months'
  shares by more than ``margin_pp`` percentage points (``critical_margin_pp``:
  critical), with at least ``min_stays`` stays in the month and in each of the
  three baseline months, and an excess that is significant: a two-proportion
  z-score of at least ``min_z`` (a small month needs a bigger jump). The drift is
  structural and slow; a monthly verdict on complete months is what the centers
  plan with, and it cannot depend on the order in which stays arrived.
* **One alert per pool and month** (window = the calendar month, a stable
  ``alert_id``).
* **Reversals** (冲正) count in the month of the reversal, as a negative stay.
* **Review "single"**, with both regions listed. This is a structural flow, not
  a fraud to be proven by a 双地联查: the pool's own center acts on it (referral
  and filing practice, local capacity, the reimbursement gradient), and the
  capital's center is asked to check the receiving hospitals' admissions. Both
  see the alert (it lists both regions) and each has its duty.

State is bounded: the months from the next one to be judged's baseline on (three
behind it, plus any months already begun after it); per month, counts, the
receiving capital hospitals and the 50 most expensive capital stays' ids.

>>> from datetime import datetime
>>> from types import SimpleNamespace as E
>>> from rules.alerts import SHANGHAI
>>> from rules.registry import Registry
>>> reg = Registry.from_dict({"schema": "pools/v1", "provinces": {"44": {"capital": "440100"}}})
>>> rule = SiphonShift(registry=reg, min_stays=4, min_z=0)
>>> def stay(month, i, capital):
...     return E(kind="settlement", visit_type="inpatient", settlement_id=f"S{month}-{i}",
...              settled_at=datetime(2025, month, 1 + i, 10, tzinfo=SHANGHAI),
...              insured_region="440900", insurance_type="resident",
...              pool_key="440900:resident", reverses=None, institution_type="hospital",
...              institution_level=3 if capital else 2, fund_paid_fen=500000,
...              treatment_region="440100" if capital else "440900",
...              institution_id="H440100001" if capital else "H440900002")
>>> state = None
>>> for month in (1, 2, 3):        # 1 stay in 4 at the capital's tertiary hospital
...     for i in range(4):
...         state, fired = rule.apply(state, stay(month, i, i == 0))
>>> for i in range(4):             # April: 3 in 4
...     state, _ = rule.apply(state, stay(4, i, i < 3))
>>> state, fired = rule.close(state, datetime(2025, 5, 1, tzinfo=SHANGHAI))  # April is over
>>> a = fired[0]
>>> a["severity"], a["regions"], a["evidence"]["baseline_share"], a["evidence"]["current_share"]
('critical', ['440900', '440100'], 0.25, 0.75)
>>> SiphonShift().apply(None, stay(4, 0, True))   # no registry: the rule does nothing
(None, [])
"""
from __future__ import annotations

import math
from fractions import Fraction

from rules.alerts import make_alert, month_of, month_window, previous_month
from rules.core import Param, Rule
from streams.records import fen_to_yuan_str

BASELINE_MONTHS = 3
TOP_IDS = 50  # capital stays listed in the alert (the most expensive); the count is exact


class SiphonShift(Rule):
    rule_id = "siphon_shift"
    description = ("A non-capital pool's share of inpatient stays at the capital's level-3 "
                   "hospitals rises above its 3-month baseline (虹吸效应)")
    subject_kind = "pool"
    key_kind = "pool"
    params = {
        "margin_pp": Param(float, 10.0, "percentage points above the baseline share that "
                           "raise a warning", minimum=0.0, maximum=100.0),
        "critical_margin_pp": Param(float, 20.0, "percentage points above the baseline share "
                                    "that make the alert critical", minimum=0.0,
                                    maximum=100.0),
        "min_stays": Param(int, 20, "inpatient stays needed in the month, and in each "
                           "baseline month, to judge", minimum=1),
        "min_z": Param(float, 3.0, "two-proportion z-score the excess must reach (guards "
                       "small months; 0 = off)",
                       minimum=0.0),
    }

    def wants(self, event):
        return getattr(event, "visit_type", None) == "inpatient"

    def apply(self, state, event):
        """Count an inpatient stay into its month; judging waits for the month to close."""
        if getattr(event, "kind", None) != "settlement" or event.visit_type != "inpatient":
            return state, []
        region = event.insured_region
        capital = self.registry.capital_of(region) if self.registry is not None else None
        if capital is None or capital == region:
            return state, []
        st = state or {"pool": event.pool_key, "region": region, "capital": capital,
                       "months": {}}
        month = month_of(event.settled_at)
        if "closed" in st and month < previous_month(st["closed"], BASELINE_MONTHS - 1):
            return state, []  # too late: no month still to be judged looks at it
        months = dict(st["months"])
        entry = months.get(month) or {"n": 0, "c": 0, "f": 0, "cf": 0, "h": {}, "ids": {}}
        sign = -1 if event.reverses else 1
        fund = event.fund_paid_fen
        entry = {**entry, "n": entry["n"] + sign, "f": entry["f"] + fund}
        if (event.treatment_region == capital and event.institution_type == "hospital"
                and event.institution_level == 3):
            hn, hf = entry["h"].get(event.institution_id, [0, 0])
            ids = dict(entry["ids"])
            if event.reverses:
                ids.pop(event.reverses, None)
            else:
                ids[event.settlement_id] = fund
                if len(ids) > TOP_IDS:
                    del ids[min(ids, key=lambda k: (ids[k], k))]
            entry.update(c=entry["c"] + sign, cf=entry["cf"] + fund, ids=ids,
                         h={**entry["h"], event.institution_id: [hn + sign, hf + fund]})
        months[month] = entry
        return {**st, "months": months}, []

    def close(self, state, midnight):
        """Judge each calendar month that ended by ``midnight`` and was not judged yet."""
        if not state:
            return state, []
        ended = previous_month(month_of(midnight))  # the last month wholly before midnight
        if state.get("closed", "") >= ended:
            return state, []
        months = state["months"]
        alerts = []
        for month in sorted(m for m in months if state.get("closed", "") < m <= ended):
            alerts += self._judge(state, months, month)
        floor = previous_month(ended, BASELINE_MONTHS - 1)  # the next month's baseline
        return {**state, "closed": ended,
                "months": {m: v for m, v in sorted(months.items()) if m >= floor}}, alerts

    def _judge(self, st: dict, months: dict, month: str) -> list[dict]:
        region, capital, pool = st["region"], st["capital"], st["pool"]
        province = region[:2]
        min_stays = self.param("min_stays", province)
        cur = months[month]
        base = [months.get(previous_month(month, k)) for k in range(1, BASELINE_MONTHS + 1)]
        if cur["n"] < min_stays or any(b is None or b["n"] < min_stays for b in base):
            return []
        share = Fraction(cur["c"], cur["n"])
        base_share = sum(Fraction(b["c"], b["n"]) for b in base) / BASELINE_MONTHS
        excess = share - base_share
        margin = Fraction(str(self.param("margin_pp", province))) / 100
        critical = Fraction(str(self.param("critical_margin_pp", province))) / 100
        base_n = sum(b["n"] for b in base)
        pooled = Fraction(cur["c"] + sum(b["c"] for b in base), cur["n"] + base_n)
        var = float(pooled * (1 - pooled) * (Fraction(1, cur["n"]) + Fraction(1, base_n)))
        z = float(excess) / math.sqrt(var) if var > 0 else (math.inf if excess > 0 else 0.0)
        if not (excess > margin and z >= self.param("min_z", province)):
            return []
        severity = "critical" if excess > critical else "warning"
        base_fund_share = sum(Fraction(b["cf"], b["f"]) if b["f"] > 0 else Fraction(0)
                              for b in base) / BASELINE_MONTHS
        fund_share = Fraction(cur["cf"], cur["f"]) if cur["f"] > 0 else Fraction(0)
        moved = cur["cf"] - round(base_fund_share * cur["f"])
        hospitals = sorted(cur["h"].items(), key=lambda kv: (-kv[1][0], kv[0]))
        pp = float(round(excess * 100, 2))
        return [make_alert(
            self.rule_id, severity, "pool", pool,
            regions=[region, capital],
            window=month_window(month),
            # When the month was complete, in event time (not when the watermark
            # happened to pass it: that differs between a live worker and a replay).
            detected_at=month_window(month)["end"],
            summary=(f"{pool}: {float(share):.0%} of the pool's inpatient stays in {month} "
                     f"went to {capital}'s tertiary hospitals, {pp:+.1f} pp over the "
                     f"{float(base_share):.0%} of the 3 months before (虹吸效应); "
                     f"fund shifted ¥{fen_to_yuan_str(moved)}"),
            evidence={
                "month": month,
                "capital_region": capital,
                "stays": cur["n"],
                "capital_stays": cur["c"],
                "current_share": round(float(share), 4),
                "baseline_share": round(float(base_share), 4),
                "excess_pp": pp,
                "margin_pp": self.param("margin_pp", province),
                "critical_margin_pp": self.param("critical_margin_pp", province),
                "z": round(z, 2) if math.isfinite(z) else None,
                "baseline_months": [
                    {"month": previous_month(month, k), "stays": b["n"], "capital_stays": b["c"],
                     "share": round(b["c"] / b["n"], 4)}
                    for k, b in enumerate(base, 1)],
                "fund_paid": fen_to_yuan_str(cur["f"]),
                "capital_fund_paid": fen_to_yuan_str(cur["cf"]),
                "current_fund_share": round(float(fund_share), 4),
                "baseline_fund_share": round(float(base_fund_share), 4),
                "fund_shifted": fen_to_yuan_str(moved),
                "receiving_hospitals": [
                    {"institution_id": iid, "stays": n, "fund_paid": fen_to_yuan_str(f)}
                    for iid, (n, f) in hospitals if n > 0],
                "settlement_count": cur["c"],
            },
            settlement_ids=cur["ids"].keys(),
            review="single",
            duties={
                region: (f"Review the referrals and filings behind the shift of this pool's "
                         f"inpatients to {capital}'s tertiary hospitals; check local "
                         "hospitals' capacity and the reimbursement gradient"),
                capital: (f"Check the admissions of patients insured in {region} at the "
                          "listed tertiary hospitals (cases a county hospital could treat)"),
            },
        )]
