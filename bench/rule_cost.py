"""What each stage and each rule of the detection core costs, per record.

    python bench/rule_cost.py [--days 30] [--seed 11] [--scale 1.0]

``fundwatch bench`` measures the detection core alone beside the live worker
(``core_events_per_s``): the live path cannot pass it, and the target of 50,000
records/s per worker is 20 µs per record. This says where the core's time goes, so
that whoever takes the next step knows which part to make faster, and a data
engineer sees what a rule of theirs adds.

A simulated province is replayed once through the offline driver (the code a
worker runs per record: validation, admission, routing, every rule and book, the
daily closes), each stage and each rule's ``apply``, ``close`` and
``close_shared`` wrapped in a timer. Printed per row: calls, µs per input record
(its total time over all records fed) and its share of the timed run. Stages
contain the rules they call: "rules on each record" is ``process`` with the
rules' ``apply`` inside it; "its own steps" is what is left of it.

The timers add two clock reads per call (about 0.1 µs; some 15 calls per record),
so the run is a little slower than an untimed one: the unwrapped rate of the same
records, measured in the same run, is printed first for comparison.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.config import Settings
from rules.core import Book
from streams import offline
from streams.app import load_registry
from streams.bench import core_rate, simulated_province
from streams.replay import replay_pipeline


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn):
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*args, **kwargs):
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - started
                calls[name] += 1
        return timed


def timed_pipeline(settings: Settings, timers: Timers):
    """A replay pipeline whose stages and steps report to ``timers``; the module
    functions the driver calls are swapped for timed ones (put back by ``restore``)."""
    pipeline = replay_pipeline(settings, load_registry(settings))
    core = pipeline.core
    swapped = {name: getattr(offline, name) for name in
               ("parse", "admit", "to_canonical", "from_canonical")}
    stage = {"parse": "validation (parse)", "admit": "admission (ledger, digest)",
             "to_canonical": "canonical form, out", "from_canonical": "canonical form, in"}
    for name, fn in swapped.items():
        setattr(offline, name, timers.wrap(stage[name], fn))
    core.routes = timers.wrap("routing to keys", core.routes)
    core.process = timers.wrap("rules on each record", core.process)
    core.close = timers.wrap("daily closes", core.close)
    for step in list(core.rules) + list(core.books):
        step_id = step.book_id if isinstance(step, Book) else step.rule_id
        what = "book" if isinstance(step, Book) else "rule"
        for method in ("apply", "close", "close_shared"):
            if hasattr(step, method):
                setattr(step, method, timers.wrap(f"{what} {step_id}.{method}",
                                                  getattr(step, method)))

    def restore() -> None:
        for name, fn in swapped.items():
            setattr(offline, name, fn)
    return pipeline, restore


def main() -> int:
    args, events = simulated_province(__doc__.split("\n\n")[0])
    settings = Settings(partitions=4)
    n = len(events)

    plain = replay_pipeline(settings, load_registry(settings))
    untimed = n / core_rate(settings, events, plain)["events_per_s"]
    timers = Timers()
    pipeline, restore = timed_pipeline(settings, timers)
    try:
        whole = n / core_rate(settings, events, pipeline)["events_per_s"]
    finally:
        restore()
    if pipeline.alerts != plain.alerts:  # ids and content: timing must change nothing
        raise SystemExit("the timed run raised other alerts than the untimed one")

    print(f"{n:,} records ({args.days} days, seed {args.seed}, scale {args.scale}); "
          f"{len(pipeline.alerts)} alerts")
    print(f"untimed: {n / untimed:,.0f} records/s, {untimed / n * 1e6:.1f} µs per record")
    print(f"timed:   {n / whole:,.0f} records/s, {whole / n * 1e6:.1f} µs per record\n")

    def row(name: str, seconds: float, calls: int | str) -> None:
        print(f"  {name:<52} {calls:>9} {seconds / n * 1e6:8.1f} µs {seconds / whole:7.1%}")

    print(f"  {'stage or step':<52} {'calls':>9} {'per record':>11} {'share':>7}")
    stages = ["validation (parse)", "canonical form, out", "admission (ledger, digest)",
              "canonical form, in", "routing to keys", "rules on each record",
              "daily closes"]
    for name in stages:
        row(name, timers.seconds[name], timers.calls[name])
    applies = sum(s for k, s in timers.seconds.items() if k.endswith(".apply"))
    closes = sum(s for k, s in timers.seconds.items() if ".close" in k)
    row("  of which the rules' and books' apply", applies, "")
    row("  rules on each record: its own steps", timers.seconds["rules on each record"]
        - applies, "")
    row("  daily closes: its own steps", timers.seconds["daily closes"] - closes, "")
    rest = whole - sum(timers.seconds[name] for name in stages)
    row("the driver's own steps (watermark, counts, ledger expiry)", rest, "")
    print("\n  each rule and book, most costly first")
    steps = sorted((k for k in timers.seconds if k not in stages), key=timers.seconds.get,
                   reverse=True)
    for name in steps:
        row(name, timers.seconds[name], timers.calls[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
