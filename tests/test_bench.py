"""The bench's view of a consumer group (streams.live.Observed), from the metrics the
workers publish: no broker needed; and what each of its phases runs in
(streams.live.watched_workers), on the embedded broker. The bench itself
(`fundwatch bench`) is a benchmark, not a test: its figures are in the README."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from streams.bench import _until_accounted
from streams.live import Observed, cpu_seconds, produce, watched_workers
from streams.simulate import simulate


def report(routed: int, instance: str, handled: dict, age_s: float = 0.0):
    """A worker's flow as the watcher keeps it: its counts and when it was heard."""
    return ({"routed": routed, "instance": instance, "detected_from": handled},
            time.monotonic() - age_s)


def test_the_detect_stage_balances_over_the_workers_not_per_worker():
    o = Observed()
    # Worker a's admission routed copies to partitions b's detect stage holds.
    o.flow["a"] = report(700, "A", {"A": 400, "B": 1})
    o.flow["b"] = report(300, "B", {"A": 299, "B": 299})
    assert not o.detect_caught_up
    o.flow["b"] = report(300, "B", {"A": 300, "B": 299})
    assert o.detect_caught_up
    o.flow["gone"] = report(50, "G", {}, age_s=60)
    assert o.detect_caught_up  # a stopped worker's copies are not waited for


def test_a_restarted_worker_is_caught_up_although_it_handled_its_predecessors_copies():
    # Killed before committing, worker "old" left copies it had routed (and handled)
    # to be handled again by its successor, which never routed them itself.
    o = Observed()
    o.flow["old"] = report(900, "O", {"O": 900}, age_s=60)
    o.flow["new"] = report(500, "N", {"O": 40, "N": 499})
    assert not o.detect_caught_up
    o.flow["new"] = report(500, "N", {"O": 40, "N": 500})
    assert o.detect_caught_up


def test_shares_count_each_recent_workers_source_partitions():
    o = Observed()
    o.flow["a"] = report(0, "a", {})
    o.flow["b"] = report(0, "b", {})
    o.sources["a"] = ["s/0", "s/1", "c/0"]
    assert o.shares() == [3, 0]          # b has reported but reads nothing yet
    o.sources["b"] = ["s/2", "s/3", "c/1", "c/2", "c/3"]
    assert sorted(o.shares()) == [3, 5]
    o.flow["a"] = report(0, "a", {}, age_s=60)
    assert o.shares() == [5]


def test_cpu_seconds_counts_a_workers_busy_time_not_its_wall_time():
    """The bench's CPU per record (one and two workers) is read this way."""
    spin = ("import time\nend = time.process_time() + 0.6\n"
            "while time.process_time() < end: pass\ntime.sleep(30)")
    busy = subprocess.Popen([sys.executable, "-c", spin])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        while cpu_seconds(busy) < 0.6 and time.monotonic() - started < 20:
            time.sleep(0.05)
        time.sleep(0.3)  # the busy one now sleeps: its CPU time stays put
        assert 0.6 <= cpu_seconds(busy) < 0.6 + 0.5  # start-up and the loop, no more
        assert cpu_seconds(idle) < 0.5  # start-up only
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert cpu_seconds(busy) is None  # gone: nothing to read


def test_the_latency_summary_is_the_order_statistics_of_the_reservoir():
    """p50 and p99 are the samples at ranks ⌊0.5 n⌋ and ⌊0.99 n⌋ of the sorted
    reservoir (found by partition), before and after the reservoir fills."""
    import random

    from streams.latency import LatencyRecorder

    rng = random.Random(3)
    recorder = LatencyRecorder(capacity=5_000, seed=1)
    for n in (1, 2, 7, 4_999, 20_000):
        while recorder.count < n:
            recorder.record(rng.expovariate(4.0))
        ordered = sorted(recorder.samples)
        size = len(ordered)
        summary = recorder.summary()
        assert summary["count"] == n
        assert summary["p50_s"] == round(ordered[min(size - 1, int(0.5 * size))], 4)
        assert summary["p99_s"] == round(ordered[min(size - 1, int(0.99 * size))], 4)
        assert summary["max_s"] == round(max(recorder.max, ordered[-1]), 4)


def test_a_bench_phase_stops_its_worker_and_watcher_when_it_fails(live_settings, tmp_path):
    """A phase that fails part-way (a worker that never catches up, say) must not
    leave its worker running beside the next phase's, measuring both."""
    phase = {}

    async def failing_phase():
        async with watched_workers(live_settings, [tmp_path / "worker.log"]) as (
                watcher, (worker,)):
            phase.update(worker=worker, watcher=watcher)
            await produce(live_settings, simulate(days=1, seed=11).events[:1])
            await _until_accounted(watcher, worker, 1, 120)  # the worker does work
            assert worker.poll() is None
            raise RuntimeError("the phase failed")

    with pytest.raises(RuntimeError, match="the phase failed"):
        asyncio.run(failing_phase())
    assert phase["worker"].poll() is not None, "the worker was left running"
    assert phase["watcher"]._consumer._closed, "the watcher's consumer was left open"


def test_state_sizes_names_each_rules_largest_value_largest_first():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "state_sizes.py"
    done = subprocess.run([sys.executable, str(script), "--days", "1", "--scale", "0.1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    sizes = {row[0]: int(row[1].replace(",", "")) for row in rows}
    compressed = {row[0]: int(row[3].replace(",", "")) for row in rows}
    assert {"pool_fund", "phantom_bed", "cross_province_surge"} <= set(sizes)
    assert all(size > 0 for size in sizes.values())
    assert list(sizes.values()) == sorted(sizes.values(), reverse=True)
    assert all(0 < compressed[rule] < sizes[rule] + 64 for rule in sizes)
    assert [row[5] for row in rows] == ["1"] * len(rows)  # small: each value whole
    assert all(row[6].startswith(row[0] + "|") for row in rows)  # the key shown is its own
