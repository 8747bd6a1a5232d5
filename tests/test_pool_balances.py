"""Pool balances, offline: the replay's balances file against an independent pandas
computation over a simulated multi-month province (reversals, exact and conflicting
duplicates, malformed lines, records out of order), to the fen; order within the
allowed lateness changes nothing; a late record still counts; ``fundwatch pools``."""
from __future__ import annotations

import csv
import random
from decimal import Decimal

import orjson
import pytest

from rules.registry import Registry
from streams.cli import main
from streams.records import Rejected, parse
from streams.simulate import simulate, write
from streams.watermark import event_ms
from tests.pool_reference import monthly_balances


@pytest.fixture(scope="module")
def province(tmp_path_factory):
    """Four months and a bit of a small simulated province, written as the CLI reads it."""
    out = tmp_path_factory.mktemp("province")
    sim = simulate(days=100, seed=11, scale=0.03)
    paths = write(sim, out / "province.jsonl")
    return {"lines": list(sim.events), "events": paths["events"], "pools": paths["pools"],
            "registry": Registry.load(paths["pools"]), "dir": out}


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def replay_balances(province, lines: list[bytes] | None, name: str, *extra) -> list[dict]:
    events = province["events"]
    if lines is not None:
        events = province["dir"] / f"{name}.jsonl"
        events.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    out = province["dir"] / f"{name}.csv"
    assert main(["replay", str(events), "--pools", str(province["pools"]),
                 "--alerts-out", str(province["dir"] / f"{name}.alerts.jsonl"),
                 "--balances-out", str(out), *extra]) == 0
    return read_csv(out)


def valid_records(lines: list[bytes]) -> list[tuple[int, dict, object]]:
    """(line index, JSON, parsed event) of the lines the contract accepts."""
    out = []
    for index, raw in enumerate(lines):
        try:
            out.append((index, orjson.loads(raw), parse(raw)))
        except (Rejected, orjson.JSONDecodeError):
            pass
    return out


def test_the_balances_file_matches_pandas_to_the_fen(province, capsys):
    lines = province["lines"]
    valid = valid_records(lines)
    # The stream really holds what the reconciliation is about.
    assert {r["schema"] for _, r, _ in valid} == {"settlement/v1", "contribution/v1"}
    assert sum(1 for _, r, _ in valid if r.get("reverses")) >= 5
    ids = [r.get("settlement_id") or r.get("contribution_id") for _, r, _ in valid]
    assert len(ids) - len(set(ids)) >= 5  # duplicates
    times = [event_ms(e) for _, _, e in valid]
    assert any(b < a for a, b in zip(times, times[1:]))  # out of event-time order
    assert len(valid) < len(lines)  # and malformed lines

    rows = replay_balances(province, None, "replay")
    opening = {k: v["opening_balance_fen"] for k, v in province["registry"].pools.items()}
    expected = monthly_balances(lines, opening).to_dict("records")
    assert len(rows) == len(expected) >= 4 * len(opening)
    mismatches = [(got, want) for got, want in zip(rows, expected) if got != want]
    assert not mismatches, mismatches[:3]
    assert list(rows[0]) == ["region", "insurance_type", "month", "income", "expenditure",
                             "balance_end", "months_of_payment"]
    # The simulator planted a pool in deficit: its balance falls month on month.
    thin = [r for r in rows if (r["region"], r["insurance_type"]) == ("441500", "resident")]
    assert float(thin[-1]["months_of_payment"]) < 3
    summary = capsys.readouterr().out
    assert "alerts" in summary and "duplicates" in summary


def test_order_within_the_lateness_changes_no_balance_and_no_alert(province):
    lines = province["lines"]
    valid = valid_records(lines)
    # Records tied to others (a duplicate, a reversal and its original) keep their
    # places: which copy comes first decides what admission keeps. Every other valid
    # record moves by up to two hours of event time, as a province's platforms
    # interleave their uploads; malformed lines stay where they were.
    count: dict[str, int] = {}
    linked: set[str] = set()
    for _, record, _ in valid:
        rid = record.get("settlement_id") or record.get("contribution_id")
        count[rid] = count.get(rid, 0) + 1
        if record.get("reverses"):
            linked.update({rid, record["reverses"]})
    linked.update(rid for rid, n in count.items() if n > 1)
    rng = random.Random(5)
    free = {index: event_ms(event) + rng.randint(0, 7_200_000)
            for index, record, event in valid
            if (record.get("settlement_id") or record.get("contribution_id")) not in linked}
    slots = sorted(free)
    shuffled = list(lines)
    for slot, source in zip(slots, sorted(slots, key=lambda i: (free[i], i))):
        shuffled[slot] = lines[source]
    assert shuffled != lines and sorted(shuffled) == sorted(lines)
    assert replay_balances(province, shuffled, "shuffled") == \
        replay_balances(province, None, "inorder")
    alerts = [(province["dir"] / f"{name}.alerts.jsonl").read_bytes()
              for name in ("shuffled", "inorder")]
    assert alerts[0] == alerts[1]


def test_a_record_later_than_the_lateness_still_counts_in_the_balance(province, capsys):
    lines = list(province["lines"])
    # Take one settlement and send it again, as new, 20 days after its day was closed.
    first = next(raw for raw in lines if b'"settlement/v1"' in raw and b'"reverses":null' in raw)
    record = orjson.loads(first)
    late = orjson.dumps({**record, "settlement_id": record["settlement_id"] + "-LATE"})
    cut = len(lines) * 2 // 3
    with_late = lines[:cut] + [late] + lines[cut:]
    rows = replay_balances(province, with_late, "late")
    base = replay_balances(province, None, "base")
    pool = (record["insured_region"], record["insurance_type"])
    month = record["settled_at"][:7]
    (got,) = [r for r in rows if (r["region"], r["insurance_type"]) == pool
              and r["month"] == month]
    (was,) = [r for r in base if (r["region"], r["insurance_type"]) == pool
              and r["month"] == month]
    def fen(value) -> int:
        return int(Decimal(str(value)) * 100)

    assert fen(got["expenditure"]) - fen(was["expenditure"]) == fen(record["fund_paid"]) > 0
    assert "late records" in capsys.readouterr().out  # and the summary says so


def test_pools_prints_a_table_of_balances_bands_and_the_provincial_layer(province, capsys):
    assert main(["pools", str(province["events"]), "--pools", str(province["pools"])]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line[:6].isdigit() and line[6] == ":"
             or line.startswith("pool ")]
    assert table[0].split()[:3] == ["pool", "name", "balance"] and "vs trend" in table[0]
    by_pool = {line.split()[0]: line for line in table[1:]}
    assert set(by_pool) == set(province["registry"].pools)
    assert by_pool["441500:resident"].endswith("critical")
    assert by_pool["445200:resident"].split()[-1] in ("warning", "critical")
    assert "广东省" in out and "adjustment fund" in out
    # Without a file and without a cluster there is nothing to read: a clear refusal.
    assert main(["pools", "--pools", str(province["pools"])]) == 2
    assert "FUNDWATCH_BOOTSTRAP_SERVERS" in capsys.readouterr().err


def test_replay_writes_a_score_for_every_inpatient_settlement(province, capsys, tmp_path):
    """``--scores-out``: one contract line per inpatient stay the model scored — every
    valid one but those reversed before their day closed — the same bytes twice."""
    runs = []
    for n in (1, 2):
        out = tmp_path / f"scores{n}.jsonl"
        assert main(["replay", str(province["events"]), "--pools", str(province["pools"]),
                     "--alerts-out", str(tmp_path / f"a{n}"), "--scores-out", str(out)]) == 0
        assert "scored settlements in" in capsys.readouterr().err
        runs.append(out.read_bytes())
    assert runs[0] == runs[1]
    lines = [orjson.loads(line) for line in runs[0].splitlines()]
    stays, reversed_ids = set(), set()
    for raw in province["lines"]:
        try:
            record = parse(raw)
        except Rejected:
            continue
        if getattr(record, "reverses", None):
            reversed_ids.add(record.reverses)
        elif getattr(record, "visit_type", None) == "inpatient":
            stays.add(record.settlement_id)
    scored = [line["settlement_id"] for line in lines]
    assert len(scored) == len(set(scored)) and set(scored) <= stays
    assert stays - set(scored) <= reversed_ids
    # The contract's two fields, and where the model scored it (optional fields).
    assert all(set(line) == {"settlement_id", "scores", "scored_before", "partition"} and
               0.0 <= line["scores"]["phantom_bed"] <= 1.0 and
               line["scored_before"]["phantom_bed"] >= 0 for line in lines)
