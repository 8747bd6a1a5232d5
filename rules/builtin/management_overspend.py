"""management_overspend — a pool spends more than its insured population explains (管理风险).

Provincial pooling should share *structural* risk (who is insured: age, sex,
illness) and leave *management* risk (how well a city runs its pool) with the city.
So every calendar month each pool's inpatient spending is set against its
**standard**: what the province's own stays of the same case mix cost
(``detectors.standard``: least squares of log fund payment on age-sex group, the
hierarchical morbidity group of ``detectors.groups``, the hospital's level, the
whether it was in a provincial capital, the insurance type and
where the stay was, retransformed to yuan by
smearing). Each pool is measured against a model of the province's *other* pools, so
that a pool cannot raise its own standard through the groups it dominates.

How it is decided (event time, Asia/Shanghai calendar months):

* State per province (key ``province``, the insured region's first two digits):
  the model's cell statistics of the months already judged, and for each month
  not yet judged its cells and, per pool, its stays' cells and the dearest stays.
  ``apply`` only counts: a settlement of the pool's insured persons, inpatient, by
  its settlement month; a reversal (冲正) takes its stay out again. A stay the fund
  paid nothing for has no logarithm: counted apart (``zero_paid_stays``).
* When a month is complete (the ``close`` timer), the categories are re-binned into
  cost quintiles from the months *before* it (never from the month's own costs),
  the model is solved on every month up to it, and each pool's month is judged:
  EXP_nom = Σ predicted payments of its stays, EXP_act = Σ paid.
* **Alert** when EXP_act exceeds EXP_nom by more than ``margin`` (10%), over at
  least ``min_cases`` stays, and the pool's mean log residual is ``min_z`` standard
  errors above zero (a small pool's dear month is not management); **critical**
  above ``critical_margin`` (30%). Evidence: nominal, actual, ratio, case count, the
  morbidity groups that make most of the gap, the model's fit (R² for both targets).
* **Info** (management merit) when a pool spends under its standard by the same
  margin and significance: nothing to act on, the basis of a fair adjustment fund.
* The first ``warmup_months`` months only teach the model (and the bins).
* A record of a month already judged (late) still teaches the model; that month's
  verdicts stay as they were.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> from rules.alerts import SHANGHAI
>>> def stay(n, region, day, yuan):
...     return E(kind="settlement", settlement_id=f"S{n}", visit_type="inpatient",
...              insured_region=region, treatment_region=region, insurance_type="employee",
...              sex="F", age=50 + n % 30,
...              diagnoses=("J18.9",) if n % 2 else ("K35.8", "I10"), institution_level=2,
...              settled_at=datetime(2025, 3 + day // 31, 1 + day % 31, 10, tzinfo=SHANGHAI),
...              fund_paid_fen=yuan * 100, total_cost_fen=yuan * 125, reverses=None,
...              pool_key=f"{region}:employee")
>>> rule = ManagementOverspend(min_cases=10, min_model_stays=100, merit=False)
>>> state = None
>>> cities = ("440100", "440300", "440600", "440900", "441500", "445200")
>>> for n in range(480):   # March and April; Shanwei (441500) bills 1.6× in April
...     region = cities[n % 6]
...     yuan = (9000 if n % 2 else 15000) + n * 37 % 2000
...     if region == "441500" and n >= 240:
...         yuan = yuan * 16 // 10
...     state, _ = rule.apply(state, stay(n, region, n // 8, yuan))
>>> state, alerts = rule.close(state, datetime(2025, 5, 1, tzinfo=SHANGHAI))
>>> [(a["subject"]["id"], a["severity"], a["evidence"]["month"]) for a in alerts]
[('441500:employee', 'critical', '2025-04')]
>>> alerts[0]["evidence"]["ratio"] > 1.3, alerts[0]["evidence"]["cases"]
(True, 39)
>>> rule.close(state, datetime(2025, 5, 1, tzinfo=SHANGHAI))[1]   # judged once
[]
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from detectors.groups import bin_categories
from detectors.standard import (LOG_UNITS, N, PAID, SY, CellFactors, Design, add,
                                category_costs, cell_of, hmg_of, merge, pack, unpack)
from rules.alerts import make_alert, month_of, month_window
from rules.core import Param, Rule
from streams.records import fen_to_yuan_str

TOP_STAYS = 10  # per pool and month: the dearest stays, for the auditor to pull first
REPORT_MONTHS = 24  # judged months kept for the structural-risk report


def month_ended(month: str, midnight: datetime) -> bool:
    return datetime.fromisoformat(month_window(month)["end"]) <= midnight


class ManagementOverspend(Rule):
    rule_id = "management_overspend"
    description = ("a pool's inpatient spending above its risk-adjusted standard: "
                   "management, not case mix (管理风险)")
    subject_kind = "pool"
    key_kind = "province"
    params = {
        "margin": Param(float, 0.10, "share by which actual spending must exceed the "
                                     "standard (or fall short of it, for a merit finding)",
                        minimum=0.0),
        "critical_margin": Param(float, 0.30, "excess over the standard from which the "
                                              "alert is critical", minimum=0.0),
        "min_cases": Param(int, 20, "inpatient stays a pool needs in the month to be "
                                    "judged", minimum=1),
        "min_z": Param(float, 3.0, "standard errors the pool's mean log residual must lie "
                                   "from zero", minimum=0.0),
        "warmup_months": Param(int, 1, "months that only teach the model before the first "
                                       "judgement", minimum=1),
        "min_category_cases": Param(int, 5, "stays a diagnosis category needs in judged "
                                            "months to get a cost quintile", minimum=1),
        "min_model_stays": Param(int, 500, "stays the other pools' model needs (months "
                                           "judged and this one) before a pool is judged "
                                           "against it", minimum=1),
        "ridge": Param(float, 3.0, "ridge penalty, in stays: how strongly a group seen "
                                    "in few stays is pulled toward its reference (0: plain "
                                    "least squares)", minimum=0.0),
        "merit": Param(bool, True, "report pools well under their standard (info)"),
    }

    def wants(self, event: Any) -> bool:
        return getattr(event, "visit_type", None) == "inpatient"

    def apply(self, state, event):
        state = state or {"pools": "", "open": {}, "judged": None, "months": 0,
                          "late": 0, "report": {}}
        paid, cost = abs(event.fund_paid_fen), abs(event.total_cost_fen)
        sign = -1 if event.reverses else 1
        month = month_of(event.settled_at)
        pool = event.pool_key
        if state["judged"] is not None and month <= state["judged"]:
            state = {**state, "late": state["late"] + 1}
            if paid and cost:  # late: teaches the model, judges nothing
                pools = unpack(state["pools"])
                own = dict(pools.get(pool) or {})
                add(own, self.cell(event), paid, cost, sign)
                state = {**state, "pools": pack({**pools, pool: own})}
            return state, []
        opened = state["open"].get(month) or {}
        mine = opened.get(pool) or {"cells": {}, "zero": 0, "top": []}
        if not (paid and cost):
            mine = {**mine, "zero": mine["zero"] + sign}
        else:
            cell = self.cell(event)
            own = dict(mine["cells"])
            add(own, cell, paid, cost, sign)
            if sign > 0:
                top = sorted(mine["top"] + [[paid, event.settlement_id, cell]],
                             key=lambda t: (-t[0], t[1]))[:TOP_STAYS]
            else:
                top = [t for t in mine["top"] if t[1] != event.reverses]
            mine = {**mine, "cells": own, "top": top}
        return {**state, "open": {**state["open"], month: {**opened, pool: mine}}}, []

    def cell(self, event) -> str:
        """The model's cell of a stay (``detectors.standard.cell_of``)."""
        # Treated in a provincial capital (its hospitals cost more at every level): a
        # fact of the stay, so it is learned from every pool whose patients go there.
        capital = self.registry is not None and \
            self.registry.capital_of(event.treatment_region) == event.treatment_region
        care = "home" if event.treatment_region == event.insured_region else \
            "province" if event.treatment_region[:2] == event.insured_region[:2] else "away"
        return cell_of(event.sex, event.age, event.diagnoses, event.institution_level,
                       capital, event.insurance_type, care)

    def close(self, state, midnight):
        if not state:
            return state, []
        due = sorted(m for m in state["open"] if month_ended(m, midnight))
        if not due:
            return state, []
        alerts = []
        state = dict(state)
        for month in due:
            opened = state["open"][month]
            judged = unpack(state["pools"])  # pool → its cells of the months judged
            history: dict = {}
            for own in judged.values():
                history = merge(history, own)
            # Bins from the months before this one: never from the stays judged now.
            bins = bin_categories(category_costs(history), self.p["min_category_cases"])
            cells = history
            for mine in opened.values():
                cells = merge(cells, mine["cells"])
            pools = {**judged, **{pool: merge(judged.get(pool, {}), mine["cells"])
                                  for pool, mine in opened.items()}}
            ridge, factors_of = self.p["ridge"], CellFactors(bins)
            province = Design(cells, factors_of)
            fit = province.fit(ridge) if state["months"] >= self.p["warmup_months"] else None
            if fit is not None:
                # Each pool against a model of the *other* pools: one that overspends
                # must not raise its own standard through the groups it dominates.
                verdicts = {pool: self._judge(
                    province.less(Design(pools[pool], factors_of)).fit(ridge),
                    fit, month, pool, mine) for pool, mine in sorted(opened.items())}
                alerts += [alert for _, alert in verdicts.values() if alert]
                report = {**state["report"], month: {
                    "model": {"stays": fit.n, "r2_fund_paid": round(fit.r2["fund_paid"], 4),
                              "r2_total_cost": round(fit.r2["total_cost"], 4),
                              "binned_categories": len(bins)},
                    "bins": bins,
                    "pools": {pool: row for pool, (row, _) in verdicts.items()}}}
                state["report"] = dict(sorted(report.items())[-REPORT_MONTHS:])
            state["pools"] = pack(pools)
            state["open"] = {m: v for m, v in state["open"].items() if m != month}
            state["months"] += 1
            state["judged"] = month
        return state, alerts

    def _judge(self, others, province, month: str, pool: str, mine: dict
               ) -> tuple[dict, dict | None]:
        """One pool's month against ``others`` (the model of the other pools): its
        report row, and an alert or None. With too few stays in the other pools the
        pool is not judged, and its standard (for the report) is the province's
        model's."""
        cases = sum(s[N] for s in mine["cells"].values())
        actual = sum(s[PAID] for s in mine["cells"].values())
        judged = others is not None and others.n >= self.p["min_model_stays"]
        fit = others if judged else province
        row = {"cases": cases, "nominal_fen": 0, "actual_fen": actual,
               "zero_paid_stays": mine["zero"], "ratio": None, "z": None, "finding": None,
               "judged": judged and cases >= self.p["min_cases"]}
        nominal = 0.0
        residual = 0.0
        groups: dict[str, list] = {}
        for cell, stats in mine["cells"].items():
            n, sy, paid = stats[N], stats[SY], stats[PAID]
            log_prediction = fit.log_prediction(cell)  # once, for both sums
            expected = n * fit.fen_of_log(log_prediction)
            nominal += expected
            residual += sy / LOG_UNITS - n * log_prediction
            group = groups.setdefault(hmg_of(cell, fit.bins), [0, 0.0, 0])
            group[0] += n
            group[1] += expected
            group[2] += paid
        row["nominal_fen"] = round(nominal)
        if cases <= 0 or nominal <= 0:
            return row, None
        ratio = actual / nominal
        sd = fit.residual_sd["fund_paid"]
        z = (residual / cases) / (sd / math.sqrt(cases)) if sd > 0 else 0.0
        row.update(ratio=round(ratio, 4), z=round(z, 2))
        margin, min_z = self.p["margin"], self.p["min_z"]
        if not row["judged"]:
            return row, None
        if ratio > 1 + margin and z >= min_z:
            row["finding"] = "overspend"
            severity = "critical" if ratio > 1 + self.p["critical_margin"] else "warning"
        elif self.p["merit"] and ratio < 1 - margin and z <= -min_z:
            row["finding"] = "merit"
            severity = "info"
        else:
            return row, None
        over = severity != "info"
        ranked = sorted(groups.items(), key=lambda g: ((g[1][1] - g[1][2]) if over
                                                        else (g[1][2] - g[1][1]), g[0]))
        region = pool.split(":")[0]
        window = month_window(month)
        gap = actual - round(nominal)
        summary = (f"pool {pool} spent ¥{fen_to_yuan_str(actual)} on {cases} inpatient stays "
                   f"in {month} against a risk-adjusted standard of "
                   f"¥{fen_to_yuan_str(round(nominal))} ({ratio - 1:+.0%}): "
                   + ("management, not case mix (管理风险)" if over
                      else "under its standard (management merit)"))
        return row, make_alert(
            self.rule_id, severity, self.subject_kind, pool, regions=[region], window=window,
            detected_at=window["end"], summary=summary,
            evidence={"month": month, "nominal": fen_to_yuan_str(round(nominal)),
                      "actual": fen_to_yuan_str(actual), "gap": fen_to_yuan_str(gap),
                      "ratio": round(ratio, 4), "cases": cases, "z": round(z, 2),
                      "margin": margin, "zero_paid_stays": mine["zero"],
                      "groups": [{"hmg": name, "cases": n,
                                  "nominal": fen_to_yuan_str(round(expected)),
                                  "actual": fen_to_yuan_str(paid),
                                  "gap": fen_to_yuan_str(paid - round(expected))}
                                 for name, (n, expected, paid) in ranked[:3]],
                      "model": {"stays": fit.n, "r2_fund_paid": round(fit.r2["fund_paid"], 4),
                                "r2_total_cost": round(fit.r2["total_cost"], 4)}},
            settlement_ids=[t[1] for t in mine["top"]])


def stays_of(lines, rule: ManagementOverspend, province: str | None = None) -> list[tuple]:
    """(month, cell, fund paid, total cost) of each stay in ``lines`` (raw records)
    the model learns from — inpatient, not a reversal, paid by the fund — optionally
    of one province: what a benchmark or a test fits a batch model to."""
    from streams.records import Rejected, parse

    out = []
    for raw in lines:
        try:
            event = parse(raw)
        except Rejected:
            continue
        if event.kind == "settlement" and rule.wants(event) and not event.reverses \
                and event.fund_paid_fen > 0 \
                and (province is None or event.insured_region[:2] == province):
            out.append((month_of(event.settled_at), rule.cell(event), event.fund_paid_fen,
                        event.total_cost_fen))
    return out
