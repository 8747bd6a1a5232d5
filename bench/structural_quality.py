"""Structural versus management risk, measured: the standard-expenditure model and the
``management_overspend`` rule on simulated provinces (one per seed).

Per seed it prints
* the model on every inpatient stay of the province (Guangdong, 44): R² of log fund
  payment and log total cost, in-sample and out-of-sample (each month predicted by
  the months before it), for plain least squares and for the rule's ridge penalty;
* the online model (cell sums, ``detectors.standard``) against a batch least-squares
  fit with numpy on the individual stays: largest coefficient and prediction gaps;
* River's ``LinearRegression`` (SGD, one pass, one stay at a time, as an online
  learner would see them) on the same indicators: its R² and its largest gap to the
  batch fit — why the rule keeps sums instead;
* cost: microseconds per counted settlement, milliseconds per month's solve, the
  state's size;
* the rule through the offline driver: each pool-month judged, the planted pool's
  months flagged (recall) and any other pool flagged (false alarms), merits.

    python bench/structural_quality.py                 # seeds 1-3, 184 days, scale 0.3
    python bench/structural_quality.py --seeds 7 --days 125 --scale 0.1   # the demo's
"""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import arguments, command_line, rule_params  # noqa: E402
from detectors.groups import bin_categories  # noqa: E402
from detectors.standard import add, category_costs, factors, solve  # noqa: E402
from rules.builtin.management_overspend import ManagementOverspend, stays_of  # noqa: E402
from rules.core import DetectionCore  # noqa: E402
from rules.registry import Registry  # noqa: E402
from streams.offline import OfflinePipeline  # noqa: E402
from streams.simulate import OVERSPEND_POOL, simulate, write  # noqa: E402

PROVINCE = "44"


def r2(y, fitted) -> float:
    return float(1 - np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2))


def model_figures(stays, ridge: float) -> dict:
    cells: dict = {}
    started = time.perf_counter()
    for _, cell, paid, cost in stays:
        add(cells, cell, paid, cost)
    per_stay_us = (time.perf_counter() - started) / len(stays) * 1e6
    bins = bin_categories(category_costs(cells), 5)
    started = time.perf_counter()
    fit = solve(cells, bins)
    solve_ms = (time.perf_counter() - started) * 1000
    ridged = solve(cells, bins, ridge)
    out = {"stays": len(stays), "cells": len(cells), "columns": len(fit.columns),
           "add_us": per_stay_us, "solve_ms": solve_ms,
           "state_kb": len(orjson.dumps(cells)) / 1024}
    # Batch least squares on the individual stays (numpy).
    names = {name: k for k, name in enumerate(fit.columns)}
    x = np.zeros((len(stays), len(fit.columns)))
    x[:, 0] = 1
    for i, (_, cell, _, _) in enumerate(stays):
        for factor, level in factors(cell, bins).items():
            k = names.get(f"{factor}={level}")
            if k is not None:
                x[i, k] = 1
    for target, col in (("fund_paid", 2), ("total_cost", 3)):
        y = np.log([s[col] for s in stays])
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        online = np.array([fit.log_prediction(s[1], target) for s in stays])
        out[f"{target}.r2_ols"] = r2(y, x @ beta)
        out[f"{target}.r2_online"] = fit.r2[target]
        out[f"{target}.r2_ridge"] = ridged.r2[target]
        out[f"{target}.max_coef_gap"] = float(np.max(np.abs(fit.beta[target] - beta)))
        out[f"{target}.max_pred_gap"] = float(np.max(np.abs(online - x @ beta)))
        out.update({f"{target}.{k}": v for k, v in out_of_sample(stays, col, ridge).items()})
    out.update(river_figures(stays, bins, x, fit))
    return out


def out_of_sample(stays, col: int, ridge: float) -> dict:
    """Each month predicted by a model of the months before it (bins likewise)."""
    months = sorted({s[0] for s in stays})
    ys, ols, rdg = [], [], []
    for k, month in enumerate(months[1:], 1):
        before = {}
        for m, cell, paid, cost in stays:
            if m < month:
                add(before, cell, paid, cost)
        bins = bin_categories(category_costs(before), 5)
        plain, ridged = solve(before, bins), solve(before, bins, ridge)
        target = "fund_paid" if col == 2 else "total_cost"
        for m, cell, paid, cost in stays:
            if m == month:
                ys.append(math.log(paid if col == 2 else cost))
                ols.append(plain.log_prediction(cell, target))
                rdg.append(ridged.log_prediction(cell, target))
    y = np.array(ys)
    return {"r2_next_month_ols": r2(y, np.array(ols)),
            "r2_next_month_ridge": r2(y, np.array(rdg))}


def river_figures(stays, bins, x, fit) -> dict:
    from river import linear_model, optim

    model = linear_model.LinearRegression(optimizer=optim.SGD(0.01), intercept_lr=0.01)
    y = np.log([s[2] for s in stays])
    started = time.perf_counter()
    features = []
    for (_, cell, _, _), target in zip(stays, y):
        row = {f"{f}={v}": 1.0 for f, v in factors(cell, bins).items()}
        features.append(row)
        model.learn_one(row, float(target))
    learn_us = (time.perf_counter() - started) / len(stays) * 1e6
    predicted = np.array([model.predict_one(row) for row in features])
    batch = np.array([fit.log_prediction(s[1]) for s in stays])
    return {"river.r2": r2(y, predicted), "river.max_pred_gap": float(np.max(np.abs(
        predicted - batch))), "river.mean_pred_gap": float(np.mean(np.abs(predicted - batch))),
        "river.learn_us": learn_us}


def detection(sim, registry, params) -> dict:
    rule = ManagementOverspend(registry=registry, **params)
    pipeline = OfflinePipeline(DetectionCore([rule], books=[]))
    started = time.perf_counter()
    pipeline.feed_all(sim.events)
    pipeline.close_input()
    elapsed = time.perf_counter() - started
    planted = ":".join(OVERSPEND_POOL)
    judged, flagged, false, merits = 0, 0, [], []
    for slot, value in pipeline.state.items():
        for month, entry in value["v"]["report"].items():
            for pool, row in entry["pools"].items():
                if not row.get("judged"):
                    continue
                if pool == planted:
                    judged += 1
                    flagged += row["finding"] == "overspend"
                elif row["finding"] == "overspend":
                    false.append(f"{pool} {month} ×{row['ratio']} z {row['z']}")
                elif row["finding"] == "merit":
                    merits.append(f"{pool} {month} ×{row['ratio']} z {row['z']}")
    state_kb = sum(len(orjson.dumps(v)) for v in pipeline.state.values()) / 1024
    return {"planted_months_judged": judged, "planted_months_flagged": flagged,
            "false_alarms": false, "merits": merits, "rule_s": elapsed,
            "rule_state_kb": state_kb}


def main() -> int:
    ap = arguments(__doc__.split("\n")[0], "1-3", "management_overspend.min_z=2.5")
    ap.set_defaults(days=184, scale=0.3)
    args = ap.parse_args()
    params = rule_params(ap, args, ["management_overspend"])["management_overspend"]
    ridge = params.get("ridge", ManagementOverspend.params["ridge"].default)
    print(command_line("bench/structural_quality.py", args))
    totals = defaultdict(float)
    for seed in args.seeds:
        sim = simulate(days=args.days, seed=seed, scale=args.scale, start=args.start)
        paths = write(sim, Path(f"/tmp/structural-bench-{seed}.jsonl"))
        registry = Registry.load(paths["pools"])
        rule = ManagementOverspend(registry=registry, **params)
        m = model_figures(stays_of(sim.events, rule, PROVINCE), ridge)
        d = detection(sim, registry, params)
        print(f"seed {seed}: {m['stays']:,} inpatient stays in province {PROVINCE}, "
              f"{m['cells']:,} cells, {m['columns']} columns")
        for target in ("total_cost", "fund_paid"):
            print(f"  log {target:<10} R² in-sample OLS {m[target + '.r2_ols']:.3f} "
                  f"(online {m[target + '.r2_online']:.3f}), ridge λ={ridge:g} "
                  f"{m[target + '.r2_ridge']:.3f}; next month OLS "
                  f"{m[target + '.r2_next_month_ols']:.3f}, ridge "
                  f"{m[target + '.r2_next_month_ridge']:.3f}; online vs numpy: coefficients "
                  f"within {m[target + '.max_coef_gap']:.1e}, predictions within "
                  f"{m[target + '.max_pred_gap']:.1e}")
        print(f"  River LinearRegression (SGD 0.01, one pass): R² {m['river.r2']:.3f}; "
              f"predictions off the batch fit by {m['river.mean_pred_gap']:.3f} on average, "
              f"{m['river.max_pred_gap']:.3f} at most; {m['river.learn_us']:.1f} µs/stay")
        print(f"  cost: {m['add_us']:.1f} µs to count a stay, {m['solve_ms']:.1f} ms per solve "
              f"(one per pool and month), cells {m['state_kb']:.0f} KB as JSON; the rule over "
              f"the whole stream {d['rule_s']:.1f} s, its state {d['rule_state_kb']:.0f} KB")
        print(f"  overspending pool {':'.join(OVERSPEND_POOL)}: {d['planted_months_flagged']} "
              f"of {d['planted_months_judged']} judged months flagged; other pools flagged: "
              f"{len(d['false_alarms'])} {d['false_alarms'] or ''}; merits (info): "
              f"{len(d['merits'])} {d['merits'] or ''}")
        totals["judged"] += d["planted_months_judged"]
        totals["flagged"] += d["planted_months_flagged"]
        totals["false"] += len(d["false_alarms"])
        totals["r2_cost"] += m["total_cost.r2_ols"]
        totals["r2_paid"] += m["fund_paid.r2_ols"]
    n = len(args.seeds)
    print(f"all seeds: planted pool flagged in {totals['flagged']:.0f} of "
          f"{totals['judged']:.0f} judged months (recall {totals['flagged'] / max(1, totals['judged']):.2f}); "
          f"{totals['false']:.0f} false alarms; mean in-sample R² log total cost "
          f"{totals['r2_cost'] / n:.3f}, log fund payment {totals['r2_paid'] / n:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
