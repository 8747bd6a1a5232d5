"""How fast an auditor's replay runs, beside a plain pandas batch over the same file.

    python bench/replay_speed.py [--records 1000000] [--seed 3] [--profile 100000]
    python bench/replay_speed.py --records 200000 --collector   # the collector's effect

1. Simulates a province until the file holds about ``--records`` records (JSONL).
2. Replays it as ``fundwatch replay`` does — validation, admission, every rule and
   the pool books, the balances — and times it: records per second. Also the
   daily closes' times: the longest, and those at months' ends (the longest a live
   detect partition stands still; see ``timed_closes``).
3. In the same run, a plain pandas batch over the same file: read the lines, drop
   duplicates, the monthly pool balances (income, expenditure, accumulated
   balance) and the cross-province surge (each institution's cross-province cost
   per 7-day window against the mean of the 4 before, flagged above 20%) — the
   two computations the replay is most often compared with. Prints both rates and
   their ratio (replay ÷ pandas).
4. Where the replay's time goes: a profile of the first ``--profile`` records,
   grouped by stage (parse and validate, admission, rules and books on each record,
   the daily close, the rest).

The batch knows nothing of event time, lateness, reversals of unknown originals or
the evidence an alert carries; the replay does all of that per record. The ratio
says what that costs.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.config import Settings  # noqa: E402
from rules.core import DetectionCore  # noqa: E402
from rules.registry import Registry  # noqa: E402
from streams import heap  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.simulate import simulate, write  # noqa: E402

RECORDS_PER_DAY_AT_SCALE_1 = 2_070  # the simulator's volume, measured


def make_file(records: int, seed: int, where: Path) -> dict:
    days = 125
    scale = max(records / (RECORDS_PER_DAY_AT_SCALE_1 * days), 0.01)
    sim = simulate(days=days, seed=seed, scale=scale)
    return write(sim, where / "province.jsonl")


def replay_rate(paths: dict, collector: str = "settled",
                closes: list | None = None) -> tuple[float, int, int]:
    """``collector``: "settled" as ``fundwatch replay`` sets the garbage collector
    (streams.heap), or "default" as CPython does. ``closes``: given, gets (seconds,
    midnight) of every daily close (see :func:`timed_closes`)."""
    settings = Settings.load(env={})
    registry = Registry.load(paths["pools"])
    started = time.perf_counter()
    with heap.settled() if collector == "settled" else contextlib.nullcontext(), \
            timed_closes(closes) if closes is not None else contextlib.nullcontext():
        result = replay([str(paths["events"])], settings, registry, report=io.StringIO())
    elapsed = time.perf_counter() - started
    return result.lines / elapsed, result.lines, len(result.alerts)


@contextlib.contextmanager
def timed_closes(into: list):
    """Time every run of the closing rules (``DetectionCore.close``) into ``into`` as
    (seconds, midnight). The live detect stage runs the same code for its partition
    and handles nothing else meanwhile: the longest close is how long a live
    partition stands still at that midnight (a month's end, when
    ``management_overspend`` solves its models)."""
    original = DetectionCore.close

    def close(self, slots, state, midnight):
        started = time.perf_counter()
        try:
            return original(self, slots, state, midnight)
        finally:
            into.append((time.perf_counter() - started, midnight))

    DetectionCore.close = close
    try:
        yield into
    finally:
        DetectionCore.close = original


def pandas_batch(path: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    rows = []
    for line in open(path, "rb"):
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
    df = pd.DataFrame([r for r in rows if isinstance(r, dict)])
    settlements = df[df["schema"] == "settlement/v1"].drop_duplicates("settlement_id")
    contributions = df[df["schema"] == "contribution/v1"].drop_duplicates("contribution_id")
    s_at = pd.to_datetime(settlements["settled_at"], utc=True, format="ISO8601",
                          errors="coerce").dt.tz_convert("Asia/Shanghai")
    c_at = pd.to_datetime(contributions["received_at"], utc=True, format="ISO8601",
                          errors="coerce").dt.tz_convert("Asia/Shanghai")
    fund = pd.to_numeric(settlements["fund_paid"], errors="coerce")
    spent = pd.DataFrame({"pool": settlements["insured_region"] + ":"
                          + settlements["insurance_type"],
                          "month": s_at.dt.strftime("%Y-%m"), "e": fund})
    amount = pd.to_numeric(contributions["amount"], errors="coerce")
    amount = amount.where(contributions["source"] != "adjustment_out", -amount.abs())
    income = pd.DataFrame({"pool": contributions["pool_region"] + ":"
                           + contributions["insurance_type"],
                           "month": c_at.dt.strftime("%Y-%m"), "i": amount})
    monthly = (spent.groupby(["pool", "month"])["e"].sum().to_frame()
               .join(income.groupby(["pool", "month"])["i"].sum(), how="outer").fillna(0))
    monthly["balance"] = (monthly["i"] - monthly["e"]).groupby(level=0).cumsum()
    cross = settlements[settlements["insured_region"].str[:2]
                        != settlements["treatment_region"].str[:2]]
    week = (s_at[cross.index] - pd.Timestamp("2025-01-01", tz="Asia/Shanghai")).dt.days // 7
    weekly = (pd.DataFrame({"inst": cross["institution_id"], "week": week,
                            "cost": pd.to_numeric(cross["total_cost"], errors="coerce")})
              .groupby(["inst", "week"])["cost"].sum().unstack(fill_value=0))
    baseline = weekly.shift(1, axis=1).T.rolling(4).mean().T
    flagged = int(((weekly > 1.2 * baseline) & (baseline > 0)).sum().sum())
    elapsed = time.perf_counter() - started
    return len(rows) / elapsed, len(monthly), flagged


STAGES = [  # (stage, file, the functions whose cumulative time is the stage's)
    ("parse and validate", "records.py", {"parse"}),
    ("admission (duplicates, reversals)", "admission.py", {"admit"}),
    ("the canonical form between stages, as live", "records.py",
     {"to_canonical", "from_canonical"}),
    ("routing to keys", "core.py", {"routes"}),
    ("rules and books, per record", "core.py", {"process"}),
    ("daily close (rules judging whole days)", "core.py", {"close"}),
    ("reading and hashing the file", "replay.py", {"records"}),
]


def profile(paths: dict, records: int) -> list[tuple[str, float]]:
    lines = open(paths["events"], "rb").readlines()[:records]
    sample = Path(tempfile.mkdtemp()) / "sample.jsonl"
    sample.write_bytes(b"".join(lines))
    settings = Settings.load(env={})
    registry = Registry.load(paths["pools"])
    prof = cProfile.Profile()
    prof.enable()
    replay([str(sample)], settings, registry, report=io.StringIO())
    prof.disable()
    stats = pstats.Stats(prof)
    whole = max(ct for (_, _, _, ct, _) in stats.stats.values())
    out = []
    for stage, filename, names in STAGES:
        cum = sum(ct for (f, _, fn), (_, _, _, ct, _) in stats.stats.items()
                  if f.endswith(filename) and fn in names)
        out.append((stage, cum / whole))
    out.append(("the rest (the pipeline's own steps, the watermark, profiling)",
                1 - sum(share for _, share in out)))
    return out


def compare_collectors(paths: dict) -> int:
    rates: dict[str, list[int]] = {"default": [], "settled": []}
    for collector in ("default", "settled", "default", "settled"):
        rate, lines, alerts = replay_rate(paths, collector)
        rates[collector].append(round(rate))
        print(f"replay, collector {collector}: {lines:,} records at {rate:,.0f}/s "
              f"({alerts:,} alerts)", flush=True)
    means = {c: sum(r) / len(r) for c, r in rates.items()}
    print(orjson.dumps({"default_records_per_s": rates["default"],
                        "settled_records_per_s": rates["settled"],
                        "ratio": round(means["settled"] / means["default"], 3),
                        "records": lines}).decode())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--profile", type=int, default=100_000,
                        help="records profiled by stage (0: no profile)")
    parser.add_argument("--collector", action="store_true",
                        help="only the replay, with CPython's default garbage collector "
                             "and as fundwatch replay sets it (streams.heap), alternately, "
                             "twice each")
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="fw-replay-bench-"))
    started = time.perf_counter()
    paths = make_file(args.records, args.seed, where)
    size = paths["events"].stat().st_size
    print(f"simulated {paths['events']} ({size / 1e6:,.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s")
    if args.collector:
        return compare_collectors(paths)
    closes: list = []
    rate, lines, alerts = replay_rate(paths, closes=closes)
    print(f"replay, every rule and the pool books: {lines:,} records at {rate:,.0f}/s "
          f"({alerts:,} alerts)")
    longest, at = max(closes, key=lambda close: close[0])
    month_ends = [s for s, midnight in closes if midnight.day == 1]
    print(f"daily closes: {len(closes):,}, longest {longest:.3f} s (before {at:%Y-%m-%d}); "
          f"at months' ends {', '.join(f'{s:.3f}' for s in month_ends)} s")
    batch, pool_months, flagged = pandas_batch(paths["events"])
    print(f"pandas batch (monthly balances + weekly surge): {batch:,.0f} records/s "
          f"({pool_months:,} pool-months, {flagged:,} institution-weeks above 20%)")
    print(f"ratio replay / pandas: {rate / batch:.3f}")
    print(f"target 100,000 records/s: {rate / 100_000:.2f} of it")
    if args.profile:
        print(f"where the replay's time goes (cProfile, first {args.profile:,} records; "
              "shares of the whole run):")
        for stage, share in profile(paths, args.profile):
            print(f"  {stage:<62} {share:6.1%}")
    print(orjson.dumps({"replay_records_per_s": round(rate), "pandas_records_per_s":
                        round(batch), "ratio": round(rate / batch, 4),
                        "records": lines, "longest_close_s": round(longest, 3)}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
