"""What the pool books cost: per record, and as state grows with pools and months.

    python bench/pool_cost.py [--days 125] [--scale 0.1]

Prints, for a simulated province:

* the book's update cost per record (``PoolBook.apply`` plus the JSON encoding a
  Faust table makes of the new value on every write), and the state written;
* the offline pipeline with and without the pool book and its rules, side by side
  in one run (a ratio: these machines are shared and noisy);
* how the state grows: bytes per pool after 1, 6, 12, 24 and 36 months of daily
  records, live (25 months kept) and in a replay (every month kept), and the table's
  total for 100 and 2,800 pools (China's pooling units, times two insurance types).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.alerts import SHANGHAI  # noqa: E402
from rules.core import DetectionCore, load_rules  # noqa: E402
from rules.pools import PoolBook  # noqa: E402
from rules.registry import Registry  # noqa: E402
from streams.offline import OfflinePipeline  # noqa: E402
from streams.records import Rejected, parse  # noqa: E402
from streams.simulate import simulate  # noqa: E402


def update_cost(events, registry) -> dict:
    book, state, written = PoolBook(registry), {}, 0
    started = time.perf_counter()
    for event in events:
        key = event.pool_key
        state[key] = book.apply(state.get(key), event)
        written += len(orjson.dumps(state[key]))
    elapsed = time.perf_counter() - started
    return {"records": len(events), "us_per_record": elapsed / len(events) * 1e6,
            "mean_state_bytes": written / len(events)}


def pipeline_rate(lines, registry, with_books: bool) -> float:
    rules = [r for r in load_rules(registry=registry) if with_books or r.book is None]
    core = DetectionCore(rules, books=None if with_books else [])
    started = time.perf_counter()
    OfflinePipeline(core).feed_all(lines)
    return len(lines) / (time.perf_counter() - started)


def growth(months: int, keep_months: int | None) -> int:
    """Bytes of one pool's book after ``months`` of one settlement and one
    contribution a day, closed daily as the watermark passes."""
    book, state = PoolBook(keep_months=keep_months), None
    day = datetime(2023, 1, 1, 10, tzinfo=SHANGHAI)
    end = day + timedelta(days=round(months * 30.44))
    while day < end:
        state = book.apply(state, SimpleNamespace(
            kind="settlement", pool_key="440900:resident", fund_paid_fen=1234_56,
            settled_at=day))
        state = book.apply(state, SimpleNamespace(
            kind="contribution", pool_key="440900:resident", source="individual",
            amount_fen=2345_67, received_at=day))
        day += timedelta(days=1)
        state = book.close(state, datetime(day.year, day.month, day.day, tzinfo=SHANGHAI))
    return len(orjson.dumps(state))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=125)
    parser.add_argument("--scale", type=float, default=0.1)
    args = parser.parse_args()
    sim = simulate(days=args.days, seed=7, scale=args.scale)
    registry = Registry.from_dict(sim.registry)
    events = []
    for raw in sim.events:
        try:
            events.append(parse(raw))
        except Rejected:
            pass
    cost = update_cost(events, registry)
    print(f"pool book update: {cost['us_per_record']:.1f} µs per record "
          f"(apply + JSON of the new value), {cost['mean_state_bytes']:.0f} bytes written "
          f"per record on average, {cost['records']:,} records")
    without = pipeline_rate(sim.events, registry, with_books=False)
    with_books = pipeline_rate(sim.events, registry, with_books=True)
    print(f"offline pipeline: {without:,.0f} records/s without the pool book and its rules, "
          f"{with_books:,.0f} with them (ratio {with_books / without:.2f})")
    print("state per pool (bytes) after   1 / 6 / 12 / 24 / 36 months:")
    for label, keep in (("live (25 months kept)", 25), ("replay (every month)", None)):
        sizes = [growth(m, keep) for m in (1, 6, 12, 24, 36)]
        print(f"  {label:24} " + " / ".join(f"{s:,}" for s in sizes)
              + f"   → {sizes[-1] * 100 / 1e6:.1f} MB for 100 pools, "
              f"{sizes[-1] * 5600 / 1e6:.1f} MB for 5,600")


if __name__ == "__main__":
    main()
