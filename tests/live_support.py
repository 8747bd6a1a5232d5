"""Running records through a real worker and watching what comes out (broker tests)."""
from __future__ import annotations

import time

from infra.broker import kafka_client_options
from streams.live import Observed, Watcher, produce

# A test's consumer groups, quicker than a worker's defaults (Settings): Tansu
# answers a first join after half the session timeout (measured: 5 s with 10 s, 3 s
# with 6 s; the rebalance timeout does not count), and a killed worker's partitions
# move once its session has expired (6 s: the least Kafka's brokers accept). A test
# starts a worker or two and kills some: measured, the kill-and-restart test of
# test_live_pipeline.py took 30 s with these against 38 s. The kill, restart and
# scale-out tests pass with both.
GROUP_TIMEOUTS = {"rebalance_timeout_s": 2.0, "session_timeout_s": 6.0}


def new_topic(broker, name: str, partitions: int) -> str:
    """A topic of its own for one test (``name-<random>``), created on ``broker``."""
    import uuid

    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return topic


def wait_until(predicate, timeout_s: float = 60) -> bool:
    """Poll ``predicate`` every 0.2 s until it holds (True) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


async def run_through_worker(settings, worker, lines, expect_accounted, timeout_s=90.0,
                             settle_s=2.0, closed_through=None,
                             count_redelivered=False, feeder=None, observer=None) -> Observed:
    """Produce ``lines``, wait until ``expect_accounted`` records are accounted for
    and the detect stage has caught up — and, with ``closed_through`` (an aware
    datetime, a midnight), until every detect partition has closed the days before
    it — then a little longer to see that nothing more (a stray duplicate, say)
    comes out. ``count_redelivered``: after a SIGKILL, a record whose admission
    count was lost with the killed worker's unflushed table writes (its ledger entry
    made it) comes back as "redelivered"; count those too. ``feeder`` and ``observer``:
    other settings (another cluster user) for the producer and the watcher."""
    def alive(_):
        assert worker.poll() is None, f"worker exited with {worker.returncode}; see its log"

    observer = observer or settings
    watcher = Watcher(observer)
    await watcher.start()
    await produce(feeder or settings, lines)
    due = None if closed_through is None else int(closed_through.timestamp() * 1000)

    def done(o):
        closed = o.closed_through(settings.partitions)
        extra = o.count("redelivered") if count_redelivered else 0
        return o.settled(expect_accounted - extra) and (
            due is None or (closed is not None and closed >= due))

    ok = await watcher.until(done, timeout_s, tick=alive)
    await watcher.until(lambda o: False, settle_s)
    await watcher.stop()
    observed = watcher.observed
    positions = "" if ok else "; topics' partitions (committed, records held): " + str(
        {name: await partition_positions(observer, settings.topic(name))
         for name in ("settlements", "admit", "detect")})
    assert ok, (f"only {observed.accounted}/{expect_accounted} records accounted for "
                f"(detect stage caught up: {observed.detect_caught_up}; flow per worker "
                f"{ {w: f for w, (f, _) in observed.flow.items()} }), "
                f"{len(observed.alerts)} alerts, days closed per partition {observed.closed} "
                f"(due {due}){positions}")
    return observed


async def read_changelog(settings, table: str) -> list[tuple[bytes, bytes | None]]:
    """A table's changelog read whole, in order per partition: (key, value) of every
    record, value None for a tombstone."""
    return await read_topic(settings, settings.changelog_topic(table))


async def read_topic(settings, topic: str) -> list[tuple[bytes, bytes | None]]:
    """A topic of ``settings.partitions`` partitions read whole, in order per
    partition: (key, value) of every record. Counted by reading: Tansu 0.6's
    ListOffsets answers the last batch's base offset + 1, not the end offset."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, **kafka_client_options(settings))
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records = []
        while batches := await consumer.getmany(timeout_ms=500):
            for messages in batches.values():
                records.extend((m.key, m.value) for m in messages)
        return records
    finally:
        await consumer.stop()


async def partition_positions(settings, topic: str) -> dict[int, tuple[int | None, int]]:
    """For each partition of ``topic``: (the worker group's committed offset, the
    number of records it holds, counted by reading). What a test's failure message
    needs to tell "the group committed past records" from "no worker read them"."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.app_id, enable_auto_commit=False,
                                **kafka_client_options(settings))
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        committed = {tp.partition: await consumer.committed(tp) for tp in parts}
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        held = dict.fromkeys(committed, 0)
        while batches := await consumer.getmany(timeout_ms=500):
            for tp, messages in batches.items():
                held[tp.partition] = messages[-1].offset + 1
        return {p: (committed[p], held[p]) for p in committed}
    finally:
        await consumer.stop()


def worker_stacks(worker, log_path, wait_s: float = 2.0) -> str:
    """Every thread's stack of a running worker, for a failure message about a worker
    gone quiet: Faust's worker (mode.Worker) writes them to its log on SIGUSR1, if
    its event loop is free to; nothing comes if the loop itself is blocked."""
    import signal

    if worker.poll() is not None:
        return f"(the worker exited with {worker.returncode})"
    before = log_path.stat().st_size
    worker.send_signal(signal.SIGUSR1)
    time.sleep(wait_s)
    with open(log_path, "rb") as log:
        log.seek(before)
        return log.read().decode(errors="replace")
