"""The structural-risk report: each pool's standard expenditure and its share.

A province sizing its adjustment fund (调剂金) on structural grounds wants, per pool
and month, what its insured population *should* cost — EXP_nom, the sum of the
risk-adjusted standard payments of its inpatient stays (``management_overspend``,
``detectors.standard``) — next to what it did cost. The **structural share** of a
pool is its EXP_nom over the province's: transfers made in proportion to it follow
who is insured and how ill, and do not reward a pool for overspending. Read from
the rule's state: the live deployment's changelog (``fundwatch structural``) or a
replay (``fundwatch structural FILE...``, ``fundwatch replay --structural-out``).

>>> state = {"management_overspend|44": {"v": {"report": {"2025-04": {
...     "model": {"stays": 900, "r2_fund_paid": 0.61, "r2_total_cost": 0.66},
...     "pools": {"440300:employee": {"cases": 40, "nominal_fen": 60000000,
...                                   "actual_fen": 87000000, "ratio": 1.45, "z": 5.1,
...                                   "zero_paid_stays": 0, "finding": "overspend"},
...               "440900:resident": {"cases": 30, "nominal_fen": 40000000,
...                                   "actual_fen": 39000000, "ratio": 0.975, "z": -0.3,
...                                   "zero_paid_stays": 1, "finding": None}}}}}}}
>>> rows = structural_rows(state)
>>> [(r["pool"], r["structural_share"], r["gap"]) for r in rows]
[('440300:employee', 0.6, '270000.00'), ('440900:resident', 0.4, '-10000.00')]
>>> print("\\n".join(render_structural(rows)))   # doctest: +NORMALIZE_WHITESPACE
province 44, 2025-04 — model: 900 stays, R² 0.61 (log fund payment), 0.66 (log total cost)
  pool                   stays     standard (nominal)         actual    ratio   structural share  finding
  440300:employee           40             600,000.00     870,000.00    1.450              60.0%  overspend (管理风险)
  440900:resident           30             400,000.00     390,000.00    0.975              40.0%
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping

from rules.alerts import month_of
from streams.records import fen_to_yuan_str

RULE = "management_overspend"
COLUMNS = ["province", "month", "pool", "pool_name", "cases", "nominal", "actual", "gap",
           "ratio", "z", "structural_share", "judged", "finding", "zero_paid_stays",
           "model_stays", "r2_fund_paid", "r2_total_cost"]
FINDINGS = {"overspend": "overspend (管理风险)", "merit": "merit (under standard)"}


def structural_rows(state: Mapping[str, dict], registry=None,
                    month: str | None = None) -> list[dict]:
    """One row per judged pool and month (only ``month`` when given), by province,
    month, then structural share (largest first)."""
    rows = []
    for slot in sorted(state):
        if not slot.startswith(RULE + "|"):
            continue
        province = slot.split("|", 1)[1]
        for judged, entry in sorted(((state[slot]["v"] or {}).get("report") or {}).items()):
            if month is not None and judged != month:
                continue
            total = sum(row["nominal_fen"] for row in entry["pools"].values())
            model = entry["model"]
            part = []
            for pool, row in entry["pools"].items():
                part.append({
                    "province": province, "month": judged, "pool": pool,
                    "pool_name": _name(registry, pool), "cases": row["cases"],
                    "nominal": fen_to_yuan_str(row["nominal_fen"]),
                    "actual": fen_to_yuan_str(row["actual_fen"]),
                    "gap": fen_to_yuan_str(row["actual_fen"] - row["nominal_fen"]),
                    "ratio": row["ratio"], "z": row["z"],
                    "structural_share": round(row["nominal_fen"] / total, 4) if total else None,
                    "judged": row.get("judged", True),
                    "finding": row["finding"] or "", "zero_paid_stays": row["zero_paid_stays"],
                    "model_stays": model["stays"], "r2_fund_paid": model["r2_fund_paid"],
                    "r2_total_cost": model["r2_total_cost"]})
            rows += sorted(part, key=lambda r: (-(r["structural_share"] or 0), r["pool"]))
    return rows


def latest(rows: list[dict]) -> list[dict]:
    """Each province's last judged month only."""
    last = {}
    for row in rows:
        last[row["province"]] = max(last.get(row["province"], ""), row["month"])
    return [r for r in rows if r["month"] == last[r["province"]]]


def render_structural(rows: Iterable[dict]) -> list[str]:
    lines, heading = [], None
    for row in rows:
        if (row["province"], row["month"]) != heading:
            heading = (row["province"], row["month"])
            lines.append(f"province {row['province']}, {row['month']} — model: "
                         f"{row['model_stays']:,} stays, R² {row['r2_fund_paid']:.2f} (log fund "
                         f"payment), {row['r2_total_cost']:.2f} (log total cost)")
            lines.append(f"  {'pool':<18} {'stays':>8} {'standard (nominal)':>22} "
                         f"{'actual':>14} {'ratio':>8} {'structural share':>18}  finding")
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "–"
        share = f"{row['structural_share']:.1%}" if row["structural_share"] is not None \
            else "–"
        finding = FINDINGS.get(row["finding"], row["finding"]) if row["judged"] else \
            "not judged (too few stays)"
        lines.append(f"  {row['pool']:<18} {row['cases']:>8,} {_yuan(row['nominal']):>22} "
                     f"{_yuan(row['actual']):>14} {ratio:>8} {share:>18}  {finding}".rstrip())
    return lines


def write_structural(rows: list[dict], path: str | Path) -> int:
    return _write_csv(rows, path, COLUMNS)


def _write_csv(rows: list[dict], path: str | Path, columns: list[str]) -> int:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _yuan(text: str) -> str:
    whole, _, cents = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-')):,}.{cents}"


def _name(registry, pool: str) -> str:
    entry = registry.pools.get(pool) if registry is not None else None
    return (entry or {}).get("name", "")


GROUP_COLUMNS = ["settlement_id", "month", "pool", "agg", "dg", "category", "mg", "severity",
                 "hmg", "fund_paid", "standard_fund_paid", "bins_of"]


def group_rows(events: Iterable, state: Mapping[str, dict], rule) -> list[dict]:
    """Which groups each inpatient settlement fell in (AGG, DG, MG, HMG), with the
    morbidity bins its month was judged with (``bins_of``; a month not judged yet
    takes the last judged month's), and its standard payment under the model as of
    the province's last judged month."""
    from detectors.groups import category, chapter, severity
    from detectors.standard import agg_of, hmg_of, merge, solve, unpack

    fits: dict[str, tuple] = {}
    out = []
    for event in events:
        if getattr(event, "kind", None) != "settlement" or not rule.wants(event):
            continue
        province = event.insured_region[:2]
        value = (state.get(f"{RULE}|{province}") or {}).get("v")
        if not value or not value.get("report"):
            continue
        if province not in fits:
            last = max(value["report"])
            cells: dict = {}
            for own in unpack(value["pools"]).values():
                cells = merge(cells, own)
            fits[province] = (last, solve(cells, value["report"][last]["bins"]))
        last, fit = fits[province]
        month = month_of(event.settled_at)
        bins_of = month if month in value["report"] else last
        bins = value["report"][bins_of]["bins"]
        cell = rule.cell(event)
        primary = event.diagnoses[0] if event.diagnoses else None
        out.append({
            "settlement_id": event.settlement_id, "month": month, "pool": event.pool_key,
            "agg": agg_of(cell), "dg": chapter(primary), "category": category(primary),
            "mg": bins.get(category(primary), 0), "severity": severity(event.diagnoses),
            "hmg": hmg_of(cell, bins), "fund_paid": fen_to_yuan_str(event.fund_paid_fen),
            "standard_fund_paid": fen_to_yuan_str(round(fit.predicted_fen(cell)))
            if fit is not None and event.fund_paid_fen > 0 else "",
            "bins_of": bins_of})
    return out


def write_groups(rows: list[dict], path: str | Path) -> int:
    return _write_csv(rows, path, GROUP_COLUMNS)
