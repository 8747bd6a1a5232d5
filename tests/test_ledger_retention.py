"""The ledger forgets the ids of days far behind the watermark (``ledger_retention_days``).

Offline: over weeks of a simulated province the ledger stays the size of its window,
and nothing else changes (the same alerts, the same outcomes). Live: a real worker
forgets through tombstones in its changelog, a worker killed and restarted recovers
the forgetting with the entries, and rejects a re-sent record of a forgotten day
as the replay does.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest

from rules.core import DetectionCore, load_rules
from streams.live import Watcher, start_worker, stop_worker
from streams.offline import OfflinePipeline
from streams.simulate import simulate
from tests.factories import dumps, reversal_of, settlement
from tests.live_support import read_changelog, run_through_worker, wait_until


def remembered_ids(ledger) -> int:
    return sum(1 for key in ledger if key.startswith(("s:", "c:")))


def test_the_ledger_keeps_its_window_and_nothing_else_changes():
    sim = simulate(days=40, seed=5, scale=0.1)
    runs = {}
    for days in (None, 10):
        pipeline = OfflinePipeline(DetectionCore(load_rules()), retention_days=days)
        sizes = []
        for number, line in enumerate(sim.events, 1):
            pipeline.feed(line, source=f"line/{number}", offset=number)
            if number % 500 == 0:
                sizes.append(remembered_ids(pipeline.ledger))
        runs[days] = pipeline, sizes

    forever, _ = runs[None]
    windowed, sizes = runs[10]
    # Nothing in the simulation is re-sent or reversed 10 days late: same verdicts.
    assert windowed.alerts == forever.alerts and windowed.alerts
    assert windowed.counts == forever.counts
    assert windowed.reasons == forever.reasons
    assert "beyond_retention" not in windowed.reasons
    # Forever grows with every day; the window stops growing once 10 days are full.
    days_of_ids = remembered_ids(forever.ledger) / 40
    assert remembered_ids(windowed.ledger) < 13 * days_of_ids
    assert remembered_ids(forever.ledger) > 35 * days_of_ids
    assert max(sizes) < 13 * days_of_ids
    # What is left is the window itself: every remembered settlement is from its days.
    first = windowed.retention.forgotten_before(windowed.ledger)
    assert first is not None
    day_of = _days_of(sim.events)
    kept = [key for key in windowed.ledger if key.startswith(("s:", "c:"))]
    assert kept and all(day_of[key] >= first for key in kept)


def _days_of(lines) -> dict[str, int]:
    from streams.admission import event_day, ledger_key
    from streams.records import Rejected, parse

    out = {}
    for line in lines:
        try:
            event = parse(line)
        except Rejected:
            continue
        out.setdefault(ledger_key(event), event_day(event))
    return out


def stay(day: int, n: int) -> dict:
    return settlement(settlement_id=f"KEEP-{day}-{n}", person_id=f"PK-{day}-{n}",
                      settled_at=f"2025-03-{day:02d}T10:00:00+08:00")


async def ledger_changelog(settings) -> dict[str, bytes | None]:
    """Each ledger key's last value in the changelog (None: a tombstone)."""
    return {orjson.loads(key): value
            for key, value in await read_changelog(settings, "ledger")}


async def remembers_from(settings, expected: dict, timeout_s: float = 30) -> dict:
    """The metrics' first remembered day per admission partition, once it is
    ``expected`` (or what it is when ``timeout_s`` has passed)."""
    watcher = Watcher(settings)
    await watcher.start()
    try:
        await watcher.until(lambda o: o.remembers_from == expected, timeout_s)
        return watcher.observed.remembers_from
    finally:
        await watcher.stop()


@pytest.mark.broker
@pytest.mark.parametrize("table_store", ["memory", "rocksdb"])
def test_a_restarted_worker_recovers_what_was_forgotten(live_settings, table_store):
    settings = live_settings.with_(ledger_retention_days=3, table_store=table_store)
    sent = {(day, n): stay(day, n) for day in range(1, 11) for n in range(2)}
    first = [dumps(record) for record in sent.values()]
    log = Path(settings.data_dir).parent / "worker.log"

    worker = start_worker(settings, log)
    try:
        o = asyncio.run(run_through_worker(settings, worker, first, len(first)))
        assert o.count("accepted") == len(first)
        # Once the sources are idle the watermark is 10 March 04:00 (6 h of
        # lateness): three days behind it, 1–6 March are forgotten, by tombstones.
        forgotten = {f"s:KEEP-{day}-{n}" for day in range(1, 7) for n in range(2)}

        def tombstoned():
            log_now = asyncio.run(ledger_changelog(settings))
            return {k for k, v in log_now.items() if v is None and k.startswith("s:")}
        assert wait_until(lambda: tombstoned() == forgotten, 30), tombstoned()
        # The worker's metrics say where each admission partition's memory starts.
        every = {str(p): "2025-03-07" for p in range(settings.partitions)}
        assert asyncio.run(remembers_from(settings, every)) == every
    finally:
        stop_worker(worker, hard=True)                       # SIGKILL: no clean stop

    state = asyncio.run(ledger_changelog(settings))
    assert {k for k, v in state.items() if v is not None and k.startswith("s:")} == {
        f"s:KEEP-{day}-{n}" for day in range(7, 11) for n in range(2)}

    # The restarted worker has no entry of a forgotten day: a reversal of one, dated
    # today, finds no original (with the entry still there, it would pass).
    late_reversal = reversal_of(sent[3, 0], settlement_id="KEEP-3-0-R",
                                settled_at="2025-03-10T11:00:00+08:00")
    again = [dumps(sent[2, 0]),                                 # a forgotten day
             dumps(sent[9, 1]),                                 # remembered: a duplicate
             dumps(late_reversal),
             dumps(stay(10, 7))]                                # new
    worker = start_worker(settings, log)
    try:
        o = asyncio.run(run_through_worker(settings, worker, again,
                                           len(first) + len(again)))
    finally:
        stop_worker(worker)
    assert o.count("accepted") == len(first) + 1
    assert o.count("duplicate") == 1
    reasons = {r["code"]: r["message"] for d in o.deadletters for r in d["reasons"]}
    assert sorted(reasons) == ["beyond_retention", "reversal_unknown_original"]
    assert "2025-03-02" in reasons["beyond_retention"]
    assert "forgotten" in reasons["reversal_unknown_original"]

    # The replay, with the same retention, decides every record the same way.
    offline = OfflinePipeline(DetectionCore(load_rules(), partitions=settings.partitions),
                              retention_days=3).feed_all(first + again)
    assert offline.counts["accepted"] == len(first) + 1
    assert offline.counts["duplicate"] == 1
    assert offline.reasons == Counter({"beyond_retention": 1, "reversal_unknown_original": 1})
