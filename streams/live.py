"""Driving a live pipeline from outside: start workers, feed topics, watch outputs.

The demo, the benchmark and the broker tests all do the same three things — run
``fundwatch worker`` processes against a broker, produce records to the input
topics, and read what comes out of ``alerts``, ``deadletter`` and the worker's
metrics — so they share this module.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.broker import kafka_client_options
from infra.config import Settings
from infra.tansu import true_end_offsets
from streams.changelog import EncodedValues, owner_of
from streams.records import Rejected, parse
from streams.watermark import event_ms


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDWATCH_")}
    for f in fields(Settings):
        if f.name in ("rules", "notify", "config_path"):  # the config file's tables
            continue
        name, value = f.name, getattr(settings, f.name)
        if value is not None:
            env["FUNDWATCH_" + name.upper()] = str(value)
    if settings.config_path:
        env["FUNDWATCH_CONFIG"] = settings.config_path
    return env


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The worker gets a descriptor of its own for the log; this process's is closed
    # (it was kept open for as long as this process ran, one per worker started).
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                env=settings_env(settings), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)


def peak_rss_mb(proc: subprocess.Popen) -> float | None:
    """The process's peak resident memory so far (Linux VmHWM), in MB."""
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(proc: subprocess.Popen) -> float | None:
    """The CPU time the process has used so far, user and system (Linux /proc)."""
    try:
        with open(f"/proc/{proc.pid}/stat") as stat:
            # Fields after the command (which may hold spaces), from its closing ")".
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_worker(proc: subprocess.Popen, timeout_s: float = 20.0, hard: bool = False) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def input_topic(settings: Settings, line: bytes) -> tuple[str, bytes | None]:
    """Topic and key for a raw input line, as a settlement system would send it:
    contributions keyed by pool region, settlements by person (anything unreadable
    goes to the settlements topic unkeyed — fundwatch must cope)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return settings.topic("settlements"), None
    if not isinstance(record, dict):
        return settings.topic("settlements"), None
    if record.get("schema") == "contribution/v1":
        key = record.get("pool_region")
        return settings.topic("contributions"), str(key).encode() if key else None
    key = record.get("person_id")
    return settings.topic("settlements"), str(key).encode() if isinstance(key, str) else None


async def produce(settings: Settings, lines: Iterable[bytes], *, rate_per_s: float | None = None,
                  in_step_s: int | None = 3600) -> int:
    """Send ``lines`` to their input topics, in order.

    ``in_step_s``: wait for the broker to hold everything sent so far whenever the
    records' event time has moved on this much since the last wait. A live source's
    partitions move together; a producer's per-partition batches do not (a batch
    waits until it is full, and one partition's can hold days of event time while
    another's has gone), and a worker would rightly take the partition that has
    caught up for idle and close days whose records are still in the producer.
    None: as fast as the producer goes (benchmarks)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                linger_ms=5, max_batch_size=256 * 1024,
                                **kafka_client_options(settings))
    await producer.start()
    n = 0
    started = time.monotonic()
    step_ms = in_step_s * 1000 if in_step_s else None
    flushed_at: int | None = None
    try:
        for line in lines:
            topic, key = input_topic(settings, line)
            if step_ms is not None:
                t = _event_ms_or_none(line)
                if t is not None:
                    if flushed_at is None:
                        flushed_at = t
                    elif t - flushed_at >= step_ms:
                        await producer.flush()
                        flushed_at = t
            await producer.send(topic, line, key=key)
            n += 1
            if rate_per_s and n % 100 == 0:
                ahead = n / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return n


def _event_ms_or_none(line: bytes) -> int | None:
    """The event time of a valid record; None for one the worker will reject."""
    try:
        return event_ms(parse(line))
    except Rejected:
        return None


@dataclass
class Observed:
    """What has come out of the pipeline so far."""

    alerts: dict[str, dict] = field(default_factory=dict)  # latest revision per id
    alert_revisions: int = 0
    deadletters: list[dict] = field(default_factory=list)
    _deadletter_positions: set = field(default_factory=set, repr=False)
    admit_counts: dict[str, int] = field(default_factory=dict)
    latency: dict[str, dict] = field(default_factory=dict)  # worker → latest summary
    flow: dict[str, tuple] = field(default_factory=dict)  # worker → (counts, seen at)
    closed: dict[str, int] = field(default_factory=dict)  # detect partition → midnight (ms)
    late: dict[str, int] = field(default_factory=dict)  # detect partition → late copies
    # admission partition → the first day its ledger still remembers (ISO date)
    remembers_from: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict] = field(default_factory=dict)  # settlement id → its score record
    sources: dict[str, list] = field(default_factory=dict)  # worker → source partitions read

    def count(self, outcome: str) -> int:
        return sum(v for k, v in self.admit_counts.items() if k.endswith("/" + outcome))

    @property
    def rejected(self) -> list[dict]:
        """Dead letters of input records (a rule failing on an accepted record is
        dead-lettered too, at stage "detect", but that record was processed)."""
        return [d for d in self.deadletters if d["stage"] != "detect"]

    @property
    def accounted(self) -> int:
        """Input records whose fate is known: processed, duplicate or dead-lettered."""
        return self.count("accepted") + self.count("duplicate") + len(self.rejected)

    @property
    def detect_caught_up(self) -> bool:
        """Every copy a live worker's admission sent to the detect stage has been
        handled there, by whichever worker holds its detect partition.

        Each worker counts, since it started, the copies it routed and — per sending
        process — the copies it handled. Only workers heard from in the last few
        seconds count as senders: a stopped worker's copies are not waited for. A
        worker restarted after a crash re-handles copies its predecessor sent and
        never routed itself; counting them against its own routed copies held the
        balance off for good (they are counted under the predecessor). A copy
        handled again after a hand-over counts twice, hence "at least".

        >>> o = Observed(flow={"w1": ({"routed": 3, "instance": "a",
        ...                            "detected_from": {"a": 1, "old": 5}}, time.monotonic()),
        ...                    "w2": ({"routed": 0, "instance": "b",
        ...                            "detected_from": {"a": 1}}, time.monotonic())})
        >>> o.detect_caught_up
        False
        >>> o.flow["w2"][0]["detected_from"]["a"] = 2
        >>> o.detect_caught_up
        True
        """
        now = time.monotonic()
        live = [f for f, seen in self.flow.values() if now - seen < 3.0]
        if not live:
            return False
        handled: Counter = Counter()
        for f, _ in self.flow.values():
            handled.update(f.get("detected_from", {}))
        return all(handled[f["instance"]] >= f["routed"] for f in live)

    def worked_between(self) -> tuple[float | None, float | None]:
        """When the first worker heard from began its first source batch and when the
        last one last moved the counts (epoch seconds; None where none has said).
        Read off the workers' own clocks, so exact to the batch, where the metrics
        they come in arrive about once a second.

        >>> o = Observed(flow={"w1": ({"worked_from": 10.5, "worked_until": 19.0}, 0.0),
        ...                    "w2": ({"worked_from": 11.0, "worked_until": 20.25}, 0.0),
        ...                    "w3": ({"worked_from": None, "worked_until": None}, 0.0)})
        >>> o.worked_between()
        (10.5, 20.25)
        """
        def bound(name, pick):
            times = [f[name] for f, _ in self.flow.values() if f.get(name) is not None]
            return pick(times) if times else None

        return bound("worked_from", min), bound("worked_until", max)

    def shares(self) -> list[int]:
        """How many source partitions each worker heard from in the last few
        seconds reads (a settled group: every partition once, none idle)."""
        now = time.monotonic()
        return [len(self.sources.get(worker, ())) for worker, (_, seen) in self.flow.items()
                if now - seen < 3.0]

    def settled(self, total: int) -> bool:
        """All ``total`` input records accounted for and the last stage caught up."""
        return self.accounted >= total and self.detect_caught_up

    def closed_through(self, partitions: int) -> int | None:
        """The last midnight (epoch ms) every detect partition has closed its days
        up to; None until each has closed one."""
        if len(self.closed) < partitions:
            return None
        return min(self.closed.values())

    def reasons(self) -> Counter:
        return Counter(r["code"] for d in self.rejected for r in d["reasons"])

    def rule_failures(self) -> Counter:
        return Counter(r["message"].split(" failed")[0] for d in self.deadletters
                       if d["stage"] == "detect" for r in d["reasons"])

    def alerts_by_rule(self) -> Counter:
        return Counter(a["rule_id"] for a in self.alerts.values())


class Watcher:
    """Reads alerts, dead letters and metrics from the beginning, without a group,
    so it never disturbs the workers' consumer group."""

    def __init__(self, settings: Settings, on_alert=None) -> None:
        self.settings = settings
        self.observed = Observed()
        self.on_alert = on_alert
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers,
                                          enable_auto_commit=False,
                                          auto_offset_reset="earliest",
                                          **kafka_client_options(s))
        await self._consumer.start()
        parts = [TopicPartition(t, p) for t in (s.topic("alerts"), s.topic("deadletter"),
                                               s.topic("metrics"), s.topic("scores"))
                 for p in range(s.partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)

    async def poll(self, timeout_ms: int = 200) -> None:
        s, o = self.settings, self.observed
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        for tp, messages in batches.items():
            for m in messages:
                value = orjson.loads(m.value)
                if tp.topic == s.topic("alerts"):
                    previous = o.alerts.get(value["alert_id"])
                    o.alerts[value["alert_id"]] = value
                    o.alert_revisions += 1
                    if self.on_alert:
                        self.on_alert(value, previous)
                elif tp.topic == s.topic("scores"):
                    o.scores[value["settlement_id"]] = value
                elif tp.topic == s.topic("deadletter"):
                    # At-least-once: a record redelivered after a crash may be
                    # dead-lettered twice; its source position identifies it.
                    src = value["source"]
                    position = (value["stage"], src["topic"], src["partition"], src["offset"])
                    if position not in o._deadletter_positions:
                        o._deadletter_positions.add(position)
                        o.deadletters.append(value)
                else:
                    # Counters only grow; metrics of several workers (or of a worker
                    # and its restarted successor) arrive in any order: keep the max.
                    for key, n in value["admit"].items():
                        o.admit_counts[key] = max(o.admit_counts.get(key, 0), n)
                    if value.get("latency"):
                        o.latency[value["worker"]] = value["latency"]
                    if value.get("flow"):
                        o.flow[value["worker"]] = (value["flow"], time.monotonic())
                    if "sources" in value:
                        o.sources[value["worker"]] = value["sources"]
                    for part, ms in value.get("closed", {}).items():
                        o.closed[part] = max(o.closed.get(part, ms), ms)
                    for part, n in value.get("late", {}).items():
                        o.late[part] = max(o.late.get(part, n), n)
                    for part, day in value.get("ledger_remembers_from", {}).items():
                        o.remembers_from[part] = max(o.remembers_from.get(part, day), day)

    async def until(self, predicate, timeout_s: float, tick=None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll()
            if tick:
                tick(self.observed)
            if predicate(self.observed):
                return True
        return False

    async def stop(self) -> None:
        if self._consumer:
            await self._consumer.stop()


@contextlib.asynccontextmanager
async def watched_workers(settings: Settings, logs: Iterable[Path]):
    """A :class:`Watcher` of ``settings``' deployment and one ``fundwatch worker`` per
    log file, started in that order; yields (watcher, workers) and stops the workers,
    then the watcher, however the block ends: what each phase of a benchmark runs in
    (``streams.bench``, ``bench/idle.py``)."""
    watcher = Watcher(settings)
    await watcher.start()
    workers: list[subprocess.Popen] = []
    try:
        for log in logs:
            workers.append(start_worker(settings, log))
        yield watcher, workers
    finally:
        for worker in workers:
            stop_worker(worker)
        await watcher.stop()


async def hand_over(settings: Settings, lines: list[bytes], leaving: subprocess.Popen,
                    expected_alerts: dict, *, rate_per_s: float = 600,
                    before_stop: Callable[[], None] | None = None) -> tuple[bool, Observed]:
    """The hand-over scenario (tests/test_scale_out.py, bench/handover.py): produce
    ``lines``; a third of the way through, stop the worker ``leaving`` (SIGTERM), so
    that its partitions move to the others in its group; wait until every record is
    accounted for and the alerts equal ``expected_alerts``, then a little longer to
    see that nothing more comes out. ``before_stop()`` runs just before the stop.
    Returns (whether that state was reached, what was observed)."""
    watcher = Watcher(settings)
    await watcher.start()
    producing = asyncio.create_task(produce(settings, lines, rate_per_s=rate_per_s))
    await watcher.until(lambda o: o.accounted >= len(lines) // 3, 120)
    if before_stop is not None:
        before_stop()
    stop_worker(leaving)
    await producing
    # Several workers' detect stages share partitions: wait for the records and
    # the alerts.
    done = await watcher.until(lambda o: o.accounted >= len(lines)
                               and o.alerts == expected_alerts, 180)
    await watcher.until(lambda o: False, 3.0)   # nothing more may come out
    await watcher.stop()
    return done, watcher.observed


def read_table(settings: Settings, table: str, prefix: str = "") -> dict[str, dict]:
    """The current content of a running deployment's table, read from its changelog
    topic from the beginning to its end (without a consumer group: the workers are
    not disturbed). Keys starting with ``prefix`` only."""
    return asyncio.run(read_table_async(settings, table, prefix))


async def read_table_async(settings: Settings, table: str, prefix: str = ""
                           ) -> dict[str, dict]:
    topic = settings.changelog_topic(table)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **kafka_client_options(settings))
    await consumer.start()
    held: dict[str, bytes] = {}  # as the worker's table holds them: long values in pieces
    try:
        parts = [TopicPartition(topic, p)
                 for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            await consumer._client.force_metadata_update()  # first contact: no metadata yet
            parts = [TopicPartition(topic, p)
                     for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            return {}
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        # The embedded broker under-reports ends (infra/tansu.py): confirm them, or
        # the last writes of a partition would be missed and a stale value shown.
        ends = await true_end_offsets(settings.bootstrap_servers,
                                      await consumer.end_offsets(parts),
                                      kafka_client_options(settings))
        remaining = {tp for tp in parts if ends[tp] > 0}
        empty_polls = 0
        while remaining and empty_polls < 3:
            batches = await consumer.getmany(timeout_ms=1000)
            empty_polls = 0 if batches else empty_polls + 1
            for tp, records in batches.items():
                for record in records:
                    key = _table_key(record.key)
                    if (owner_of(key) or key).startswith(prefix):
                        if record.value is None:
                            held.pop(key, None)
                        else:
                            held[key] = record.value
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        if remaining:  # a table cut short would show stale values as current
            raise TimeoutError(f"table {table!r}: changelog partitions "
                               f"{sorted(tp.partition for tp in remaining)} stopped short "
                               f"of their end offsets (3 s without a record)")
    finally:
        await consumer.stop()
    values = EncodedValues(held)
    return {key: values[key] for key in values}


def _table_key(raw: bytes | None) -> str:
    """Faust writes a table's str keys JSON-encoded."""
    if raw is None:
        return ""
    try:
        key = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    return key if isinstance(key, str) else raw.decode("utf-8", "replace")
