"""Two workers in one consumer group share the partitions; stopping one mid-stream
hands its partitions (and its tables) to the other with nothing lost or doubled,
and the alerts equal the offline driver's for the same input."""
from __future__ import annotations

import asyncio
import time

import pytest

from infra.broker import ensure_topics
from rules.core import DetectionCore, load_rules
from sinks.store import AlertStore
from streams.live import Watcher, hand_over, produce, start_worker, stop_worker
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

    def both_up() -> None:
        assert first.poll() is None and second.poll() is None, "both workers must be up"

    try:
        # mid-stream: the first worker's partitions move to the other worker
        done, observed = asyncio.run(hand_over(settings, lines, first, offline.alerts,
                                               before_stop=both_up))
        # The store is written from the alerts topic by the sink, asynchronously:
        # wait for it (the worker still up) rather than judge it at an instant.
        expected = sorted(offline.alerts.values(), key=lambda a: a["alert_id"])
        stored = store_when(settings.db_url, lambda alerts: alerts == expected, 30)
    finally:
        stop_worker(first)
        stop_worker(second)
    assert first.returncode == 0
    assert done, f"{observed.accounted}/{len(lines)} accounted for"
    assert observed.accounted == len(lines)     # each record exactly once

    assert observed.count("accepted") == offline.counts["accepted"]
    assert observed.count("duplicate") == offline.counts["duplicate"]
    assert len(observed.deadletters) == offline.counts["rejected"]
    assert observed.alerts == offline.alerts
    assert stored == expected


def store_when(db_url: str, condition, timeout_s: float) -> list[dict]:
    """The alert store's content once ``condition(content)`` holds, or when
    ``timeout_s`` has passed (whatever it holds then)."""
    deadline = time.monotonic() + timeout_s
    store = AlertStore(db_url)
    while True:
        content = store.all()
        if condition(content) or time.monotonic() > deadline:
            return content
        time.sleep(0.5)


def test_a_batch_begun_is_finished_before_a_stop_goes_on():
    """A worker told to stop mid-batch (Faust cancels its agents, then commits what
    their streams acked) finishes the batch first: a batch cut short would have its
    input committed with only part of its output sent (streams.app.to_the_end)."""
    from streams.app import to_the_end

    async def run(shielded: bool):
        sent: list[int] = []

        async def batch():
            for i in range(5):
                await asyncio.sleep(0.01)  # each send waits on the broker
                sent.append(i)

        async def agent():
            await (to_the_end(batch()) if shielded else batch())

        task = asyncio.ensure_future(agent())
        while not sent:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sent

    assert asyncio.run(run(shielded=True)) == [0, 1, 2, 3, 4]
    assert asyncio.run(run(shielded=False)) == [0]  # what the shield prevents


def test_a_record_past_the_expected_offset_sends_the_consumer_back():
    """The hand-over lost records when the consumer delivered a partition's end right
    after a seek to the committed offset, and Faust took the jump for a gap it counts
    as acked (streams/offset_guard.py). The guard sends the partition back to the
    offset due; a hole the log really has is accepted after RESEEKS tries."""
    from streams.offset_guard import DELIVER, RESEEKS, SEEK_BACK, ContiguousDelivery

    guard = ContiguousDelivery()
    guard.sought("admit/1", 32)
    assert guard.check("admit/1", 46) == (SEEK_BACK, 32)
    for offset in range(32, 47):  # the broker delivers them after the seek
        assert guard.check("admit/1", offset) == (DELIVER, None)

    # A hole in the log itself (retention deleted 100–119): the seek lands past it
    # again each time, and after RESEEKS tries the guard goes on.
    guard.sought("detect/0", 100)
    answers = [guard.check("detect/0", 120) for _ in range(RESEEKS + 1)]
    assert answers == [(SEEK_BACK, 100)] * RESEEKS + [(DELIVER, None)]
    assert guard.check("detect/0", 121) == (DELIVER, None)

    # A revoked partition has no expectation: its next owner's seek sets one.
    guard.forget("admit/1")
    assert guard.check("admit/1", 500) == (DELIVER, None)
    # No committed offset yet (a new group): the first record sets the expectation.
    guard.sought("admit/2", None)
    assert guard.check("admit/2", 7) == (DELIVER, None)
    assert guard.check("admit/2", 9) == (SEEK_BACK, 8)


def test_the_worker_guards_every_topic_it_consumes_but_the_changelogs(live_settings):
    from faust.transport.consumer import Consumer

    from streams import offset_guard
    from streams.app import build_app

    build_app(live_settings)
    settings = live_settings
    assert offset_guard._PATCHED["topics"] == {
        settings.topic(name) for name in ("settlements", "contributions", "admit",
                                          "detect", "alerts")}
    assert Consumer.getmany.__module__ == "streams.offset_guard"


async def _accounted(settings, lines, expect):
    """Produce ``lines`` (if any) and watch until ``expect`` records are accounted
    for (120 s at most), then 2 s more: (reached, what was observed)."""
    watcher = Watcher(settings)
    await watcher.start()
    if lines:
        await produce(settings, lines)
    ok = await watcher.until(lambda o: o.accounted >= expect, 120)
    await watcher.until(lambda o: False, 2.0)
    await watcher.stop()
    return ok, watcher.observed


def _faulty_worker(settings, log_path, fault="jump"):
    import subprocess
    import sys

    from streams.live import settings_env

    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.faulty_worker"],
                                env={**settings_env(settings), "FAULT": fault},
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def _reads_all(settings, worker, total: int) -> None:
    """``worker`` (a process just started) accounts for all ``total`` records in
    the broker; it is stopped after."""
    try:
        ok, observed = asyncio.run(_accounted(settings, [], total))
    finally:
        stop_worker(worker)
    assert ok, f"{observed.accounted}/{total} accounted for"
    assert observed.accounted == total


def _faulty_worker_reads_all(settings, log_path, total: int, fault="jump") -> None:
    """A worker with ``fault`` injected (one that loses records: FAULT=jump or
    lost_in_queue) accounts for all ``total`` records in the broker, having been
    seen to seek back."""
    _reads_all(settings, _faulty_worker(settings, log_path, fault), total)
    jumps = [line for line in log_path.read_text().splitlines()
             if ".settlements[" in line and "seeking back" in line]
    assert jumps, f"the injected fault did not happen (or was not seen): see {log_path}"


def test_a_consumer_standing_past_the_committed_offset_is_sent_back(live_settings, tmp_path):
    """A restarted worker whose consumer jumps SKIP records past each source
    partition's committed offset (tests/faulty_worker.py) still admits every record:
    the offset guard sees the jump and seeks back. Without the guard Faust counted
    the skipped offsets as acknowledged and committed past them."""
    settings = live_settings
    lines = simulate(days=1, seed=5).events
    half = len(lines) // 2

    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        ok, observed = asyncio.run(_accounted(settings, lines[:half], half))
        assert ok, f"{observed.accounted}/{half} accounted for before the restart"
    finally:
        stop_worker(worker)
    # The rest is in the broker before the next worker starts, so that the jump
    # past the committed offset lands inside the log.
    asyncio.run(produce(settings, lines[half:]))
    _faulty_worker_reads_all(settings, tmp_path / "faulty-worker.log", len(lines))


def test_a_consumer_standing_past_a_partitions_beginning_is_sent_back(live_settings,
                                                                      tmp_path):
    """The same jump on partitions the group never committed (the first worker of a
    new group; a partition that had no record until now): the guard expects the
    log's beginning there. It used to take the first record delivered as the start,
    and the SKIP records before it were never admitted."""
    settings = live_settings
    lines = simulate(days=1, seed=5).events
    asyncio.run(produce(settings, lines))
    _faulty_worker_reads_all(settings, tmp_path / "faulty-worker.log", len(lines))


def test_records_lost_between_the_consumer_and_the_agent_are_fetched_again(
        live_settings, tmp_path):
    """Records the consumer delivered that never reached their agent (not in its
    queue, never acknowledged: tests/faulty_worker.py, FAULT=lost_in_queue, as when
    Faust cleared the agents' queues at the end of a recovery) are found by the
    stall check and fetched again. Before, they stayed unread, uncommitted, for as
    long as the worker ran, and nothing was logged: a restarted worker left new
    records unread in CI, about one run in five."""
    settings = live_settings
    lines = simulate(days=1, seed=5).events
    asyncio.run(produce(settings, lines))
    log_path = tmp_path / "faulty-worker.log"
    _faulty_worker_reads_all(settings, log_path, len(lines), fault="lost_in_queue")
    assert "neither acknowledged nor in flight" in log_path.read_text()


def test_records_lost_on_the_way_to_the_agent_are_not_committed_past(live_settings,
                                                                      tmp_path):
    """The same loss, with the stall check's search switched off: the worker
    stops having processed everything else, and what it committed stays short of
    the lost records, so its successor reads them. Faust's own commit passed
    them (an unacknowledged record at the head of a partition never committed):
    1,653 of 1,659 records, for good."""
    settings = live_settings
    lines = simulate(days=1, seed=5).events
    asyncio.run(produce(settings, lines))
    lost = 3 * settings.partitions  # faulty_worker.SKIP per settlements partition
    faulty = _faulty_worker(settings, tmp_path / "faulty-worker.log",
                            fault="lost_in_queue_unhealed")
    try:
        ok, observed = asyncio.run(_accounted(settings, [], len(lines) - lost))
        assert ok, f"{observed.accounted}/{len(lines) - lost} accounted for"
        assert observed.accounted == len(lines) - lost, "the injected loss did not happen"
        time.sleep(4)  # past a commit interval (2.8 s): it commits what it may
    finally:
        stop_worker(faulty)
    _reads_all(settings, start_worker(settings, tmp_path / "worker.log"), len(lines))


def test_a_worker_that_gets_no_fetch_answer_exits_and_its_successor_reads_all(
        live_settings, tmp_path):
    """aiokafka's fetcher asks the group coordinator for the committed offset of
    every partition it has no position for, and fetches nothing from that broker
    until the answer comes (tests/faulty_worker.py, FAULT=no_committed_answer: it
    never comes). Such a worker said "ready" and then read nothing, silently: what
    was seen once in CI. It now warns, partition by partition, and exits (code 70)
    once a partition has had no fetch answer for FETCHLESS_EXIT_S, so that its
    supervisor restarts it; the worker started after it reads every record."""
    import subprocess

    settings = live_settings
    lines = simulate(days=1, seed=5).events
    asyncio.run(produce(settings, lines))
    log_path = tmp_path / "faulty-worker.log"
    faulty = _faulty_worker(settings, log_path, fault="no_committed_answer")
    try:
        code = faulty.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_worker(faulty)
    log = log_path.read_text()
    assert code == 70, f"the stuck worker did not exit (code {code}): see {log_path}"
    assert "no fetch answer for" in log and "fetch stage failed" in log, log[-3000:]

    _reads_all(settings, start_worker(settings, tmp_path / "worker.log"), len(lines))
