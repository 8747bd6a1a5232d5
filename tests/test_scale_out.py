"""Two workers in one consumer group share the partitions; stopping one mid-stream
hands its partitions (and its tables) to the other with nothing lost or doubled,
and the alerts equal the offline driver's for the same input."""
from __future__ import annotations

import asyncio

import pytest

from infra.broker import ensure_topics
from rules.core import DetectionCore, load_rules
from sinks.store import AlertStore
from streams.live import Watcher, produce, start_worker, stop_worker
from streams.offline import OfflinePipeline
from streams.simulate import simulate

pytestmark = pytest.mark.broker


def test_two_workers_then_one(live_settings, tmp_path):
    settings = live_settings.with_(partitions=4, topic_prefix="x" + live_settings.topic_prefix,
                                   app_id=live_settings.app_id + "-x")
    ensure_topics(settings.bootstrap_servers, settings)
    lines = simulate(days=3, seed=3).events
    offline = OfflinePipeline(DetectionCore(load_rules(), partitions=settings.partitions)
                              ).feed_all(lines)
    assert offline.alerts, "the stream should raise at least one alert to compare"
    first = start_worker(settings, tmp_path / "worker-a.log")
    second = start_worker(settings, tmp_path / "worker-b.log")

    async def run():
        watcher = Watcher(settings)
        await watcher.start()
        producing = asyncio.create_task(produce(settings, lines, rate_per_s=600))
        assert await watcher.until(lambda o: o.accounted >= len(lines) // 3, 120)
        assert first.poll() is None and second.poll() is None, "both workers must be up"
        stop_worker(first)          # mid-stream: its partitions move to the other worker
        assert first.returncode == 0
        await producing
        # Two workers' detect stages share partitions, so their own routed/detected
        # counts do not add up per worker: wait for the records and the alerts.
        done = await watcher.until(lambda o: o.accounted >= len(lines)
                                   and o.alerts == offline.alerts, 180)
        await watcher.until(lambda o: False, 3.0)   # nothing more may come out
        await watcher.stop()
        return done, watcher.observed

    try:
        done, observed = asyncio.run(run())
    finally:
        stop_worker(first)
        stop_worker(second)
    assert done, f"{observed.accounted}/{len(lines)} accounted for"
    assert observed.accounted == len(lines)     # each record exactly once

    assert observed.count("accepted") == offline.counts["accepted"]
    assert observed.count("duplicate") == offline.counts["duplicate"]
    assert len(observed.deadletters) == offline.counts["rejected"]
    assert observed.alerts == offline.alerts
    assert AlertStore(settings.db_url).all() == sorted(offline.alerts.values(),
                                                       key=lambda a: a["alert_id"])
