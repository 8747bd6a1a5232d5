"""Structural versus management risk: the online standard-expenditure model against
a batch least-squares fit (numpy, on the individual stays), its independence of
arrival order, and the simulated province's overspending pool found — and only it."""
from __future__ import annotations

import csv
import math
import random

import numpy as np
import pandas as pd
import pytest

from detectors.groups import bin_categories
from detectors.standard import CellFactors, Design, add, category_costs, factors, solve, subtract
from rules.builtin.management_overspend import ManagementOverspend, stays_of
from rules.core import DetectionCore, load_rules
from rules.registry import Registry
from streams.cli import main
from streams.offline import OfflinePipeline
from streams.simulate import OVERSPEND_POOL, simulate, write


@pytest.fixture(scope="module")
def province(tmp_path_factory):
    """Four months of a simulated province, big enough for pool-months to be judged."""
    sim = simulate(days=122, seed=7, scale=0.1)
    paths = write(sim, tmp_path_factory.mktemp("structural") / "province.jsonl")
    return sim, paths, Registry.load(paths["pools"])


def _stays(sim, registry):
    """(cell, paid, cost) of each stay the model learns from."""
    return [stay[1:] for stay in stays_of(sim.events, ManagementOverspend(registry=registry))]


def test_the_online_model_is_the_batch_least_squares_fit(province):
    sim, _, registry = province
    stays = _stays(sim, registry)
    assert len(stays) > 800
    cells: dict = {}
    for cell, paid, cost in stays:  # one settlement at a time
        add(cells, cell, paid, cost)
    bins = bin_categories(category_costs(cells), min_cases=5)
    fit = solve(cells, bins)
    _agrees_with_the_batch_fit(fit, stays)
    # The simulated costs follow the case mix (diagnosis, severity, level): the model
    # explains most of log cost; the fund's share adds the reimbursement rules' noise.
    assert fit.r2["total_cost"] > 0.5 and fit.r2["fund_paid"] > 0.5


def test_the_ridge_fit_without_some_stays_is_the_batch_ridge_fit(province):
    """What a month's close solves: the penalised model (λ·Σβ², intercept free) of the
    cells less a pool's (``Design.less``; and, to compare, of the cells ``subtract``
    leaves), with the factors shared between solves."""
    sim, _, registry = province
    stays = _stays(sim, registry)
    cells: dict = {}
    left_out: dict = {}
    for n, (cell, paid, cost) in enumerate(stays):
        add(cells, cell, paid, cost)
        if n % 3 == 0:
            add(left_out, cell, paid, cost)
    bins = bin_categories(category_costs(cells), min_cases=5)
    shared = CellFactors(bins)
    province = Design(cells, shared)
    assert province.fit(3.0).n == len(stays)
    rest = [stay for n, stay in enumerate(stays) if n % 3]
    # As the close does it (the province's normal equations less the subset's), and
    # from the remaining cells themselves.
    for fit in (province.less(Design(left_out, shared)).fit(3.0),
                solve(subtract(cells, left_out), bins, 3.0, shared)):
        assert fit.n == len(rest)
        _agrees_with_the_batch_fit(fit, rest, ridge=3.0)
    with pytest.raises(ValueError, match="other bins"):
        solve(cells, {**bins, "ZZZ": 9}, 3.0, shared)
    stranger = {"M:0-5|ZZZ|1|3|1|resident|away": [1, 90000, 8100000000, 8103, 90000,
                                                  8100000000, 8103]}
    with pytest.raises(ValueError, match="not among these cells"):
        province.less(Design(stranger, shared))


def _agrees_with_the_batch_fit(fit, stays, ridge: float = 0.0) -> None:
    """``fit`` against least squares over the individual stays: every stay a row,
    indicator columns made by pandas; a ridge as the rows √λ·e_j (j ≥ 1) under them."""
    frame = pd.DataFrame([factors(cell, fit.bins) for cell, _, _ in stays])
    design = pd.get_dummies(frame, columns=list(frame.columns), dtype=float)
    for factor, level in fit.references.items():  # the same reference levels
        design = design.drop(columns=f"{factor}_{level}")
    design = design.loc[:, design.sum() > 0]
    x = np.column_stack([np.ones(len(stays)), design.to_numpy()])
    penalty = math.sqrt(ridge) * np.eye(x.shape[1])[1:]
    for target, column in (("fund_paid", 1), ("total_cost", 2)):
        y = np.log([s[column] for s in stays])
        beta, *_ = np.linalg.lstsq(np.vstack([x, penalty]),
                                   np.concatenate([y, np.zeros(len(penalty))]), rcond=None)
        fitted = x @ beta
        r2 = 1 - np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2)
        # Logs are summed in 1e-4 units: the two agree to that.
        assert fit.r2[target] == pytest.approx(r2, abs=1e-4)
        online = np.array([fit.log_prediction(cell, target) for cell, _, _ in stays])
        assert np.max(np.abs(online - fitted)) < 1e-3
        mine = fit.coefficients(target)
        assert len(mine) == len(beta)
        for name, b in zip(design.columns, beta[1:]):
            factor, _, level = name.partition("_")
            assert mine[f"{factor}={level}"] == pytest.approx(b, abs=1e-3), name
        # Duan's smearing, computed from the stays themselves.
        smear = np.mean(np.exp(y - fitted))
        assert fit.smear[target] == pytest.approx(smear, rel=1e-3)


def test_arrival_order_changes_no_sum_and_a_reversal_takes_its_stay_out(province):
    sim, _, registry = province
    stays = _stays(sim, registry)
    forward, backward = {}, {}
    for cell, paid, cost in stays:
        add(forward, cell, paid, cost)
    shuffled = list(stays)
    random.Random(3).shuffle(shuffled)
    for cell, paid, cost in shuffled + shuffled[:50]:
        add(backward, cell, paid, cost)
    for cell, paid, cost in shuffled[:50]:  # reversed: out again, to the last digit
        add(backward, cell, paid, cost, sign=-1)
    assert backward == forward


def test_the_overspending_pool_is_flagged_and_no_other(province):
    sim, paths, registry = province
    pipeline = OfflinePipeline(DetectionCore(load_rules(registry=registry)))
    pipeline.feed_all(sim.events)
    pipeline.close_input()
    found = [a for a in pipeline.alerts.values() if a["rule_id"] == "management_overspend"]
    overspend = {a["subject"]["id"] for a in found if a["severity"] != "info"}
    assert overspend == {":".join(OVERSPEND_POOL)}
    planted = {t["window"]["start"][:7] for t in sim.truth
               if t["anomaly"] == "management_overspend"}
    months = sorted(a["evidence"]["month"] for a in found if a["severity"] != "info")
    assert months and set(months) <= planted  # judged months after the warm-up
    for alert in found:
        if alert["severity"] == "info":
            continue
        ev = alert["evidence"]
        defaults = {name: param.default for name, param in ManagementOverspend.params.items()}
        assert ev["ratio"] > 1 + defaults["margin"] and ev["cases"] >= defaults["min_cases"]
        assert ev["z"] >= defaults["min_z"]
        assert len(ev["groups"]) == 3 and ev["model"]["r2_fund_paid"] > 0.4
        assert alert["settlement_ids"]  # the dearest stays, for the auditor
    # Every other pool judged in those months is within its standard's reach.
    state = pipeline.state
    report = state["management_overspend|44"]["v"]["report"]
    for month, entry in report.items():
        for pool, row in entry["pools"].items():
            if pool != ":".join(OVERSPEND_POOL) and row["ratio"] is not None:
                assert row["finding"] != "overspend", (month, pool, row)


def test_the_structural_report_and_the_groups_of_each_settlement(province, tmp_path, capsys):
    _, paths, _ = province
    out, groups = tmp_path / "structural.csv", tmp_path / "groups.csv"
    assert main(["structural", str(paths["events"]), "--pools", str(paths["pools"]),
                 "--csv", str(out), "--groups-out", str(groups)]) == 0
    printed = capsys.readouterr().out
    assert "structural share" in printed and "overspend (管理风险)" in printed
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    by_month: dict = {}
    for row in rows:
        by_month.setdefault((row["province"], row["month"]), []).append(row)
    for part in by_month.values():  # shares add up to the province's whole
        assert math.isclose(sum(float(r["structural_share"]) for r in part), 1.0,
                            abs_tol=1e-3)
    flagged = {r["pool"] for r in rows if r["finding"] == "overspend"}
    assert flagged == {":".join(OVERSPEND_POOL)}
    listed = list(csv.DictReader(groups.open(encoding="utf-8")))
    assert len(listed) > 800
    one = listed[0]
    assert one["hmg"].startswith(one["dg"] + ".") and one["hmg"].endswith("." + one["severity"])
    assert one["agg"][0] in "MF"
    assert main(["replay", str(paths["events"]), "--pools", str(paths["pools"]),
                 "--alerts-out", str(tmp_path / "alerts.jsonl"),
                 "--structural-out", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_text(encoding="utf-8") == out.read_text(
        encoding="utf-8")
