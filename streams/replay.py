"""``fundwatch replay``: a historical stream through the live detectors, offline.

The auditor's path: the same stages and the same rules as a live worker
(``streams.offline``), over files instead of topics, with no broker. The input is
taken as complete, so once it is read every day up to the newest record's day is
closed and judged (``--live-watermark`` stops at the live watermark instead, to
compare with a worker that is still running). Two replays of the same input write
byte-identical files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import orjson

from rules.core import DetectionCore, load_rules
from rules.pools import PoolBook
from sinks.balances import (DailyBalances, balance_rows, books_in, with_registry_pools,
                            write_balances_csv)
from streams.offline import OfflinePipeline
from streams.records import Rejected, parse
from streams.watermark import event_ms


def read_lines(path: str | Path) -> Iterator[bytes]:
    """The lines of a JSONL file, gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        yield from lines


@dataclass
class InputFile:
    """One input file as read: its lines, their SHA-256 (of the bytes as stored) and
    how far the reading has come, for the progress line and the report."""

    path: str
    lines: int = 0
    sha256: str | None = None
    size: int = 0
    done_bytes: int = 0

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """(source, line number, line) for each non-blank line."""
        digest = hashlib.sha256()
        raw = open(self.path, "rb")
        self.size = Path(self.path).stat().st_size
        tapped = _Tap(raw, digest)
        buffered = io.BufferedReader(tapped, buffer_size=1 << 20)  # lines from blocks
        stream = gzip.open(buffered, "rb") if self.path.endswith(".gz") else buffered
        with raw, stream:
            for number, line in enumerate(stream, 1):
                self.done_bytes = tapped.read_bytes
                if line.strip():
                    self.lines += 1
                    yield self.path, number, line
        self.done_bytes = self.size
        self.sha256 = digest.hexdigest()

    def provenance(self) -> dict:
        return {"source": self.path, "sha256": self.sha256, "records": self.lines}


class _Tap(io.RawIOBase):
    """A file that hashes and counts what is read through it."""

    def __init__(self, raw, digest) -> None:
        self.raw, self.digest, self.read_bytes = raw, digest, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.read_bytes += n
        return n


@dataclass(frozen=True)
class Period:
    """Records whose event time falls in [start, end) are replayed, the rest counted
    and skipped. Dates are days in Asia/Shanghai; ``--to`` with a date takes in that
    whole day."""

    start_ms: int | None
    end_ms: int | None
    start: str | None = None
    end: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> "Period | None":
        if not start and not end:
            return None
        begin_ms = _moment_ms(start, end_of_day=False) if start else None
        end_ms = _moment_ms(end, end_of_day=True) if end else None
        if begin_ms is not None and end_ms is not None and end_ms <= begin_ms:
            raise ValueError(f"--to {end} is not after --from {start}")
        return cls(begin_ms, end_ms, start, end)

    def contains(self, ms: int) -> bool:
        return ((self.start_ms is None or ms >= self.start_ms)
                and (self.end_ms is None or ms < self.end_ms))


def _moment_ms(text: str, end_of_day: bool) -> int:
    from datetime import date, datetime, timedelta

    from rules.alerts import SHANGHAI

    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            return int(datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).timestamp()
                       * 1000)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or a date and time with "
                         "an offset (2025-03-01T08:00:00+08:00)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r}: give the offset (+08:00): a time without one is "
                         "ambiguous")
    return int(moment.timestamp() * 1000)


def replay_pipeline(settings, registry, lateness_s: int | None = None) -> OfflinePipeline:
    """An offline pipeline with every configured rule, whose pool books keep every
    month (the balances file lists them all; live workers keep two years)."""
    core = DetectionCore(load_rules(settings.rules, registry=registry,
                                    source=settings.config_path),
                         books=[PoolBook(registry, keep_months=None)],
                         # Models are kept per detect partition, as the live workers
                         # keep them: the same count gives the same scores.
                         partitions=settings.partitions)
    return OfflinePipeline(core, lateness_s=(settings.allowed_lateness_s if lateness_s is None
                                             else lateness_s),
                           retention_days=settings.ledger_retention_days)


@dataclass
class ReplayResult:
    pipeline: OfflinePipeline
    lines: int
    alerts: list[dict]
    inputs: list[dict] = field(default_factory=list)
    outside_period: int = 0
    timeline: DailyBalances | None = None


def replay(paths: list[str], settings, registry, *, close_input: bool = True,
           report: TextIO | None = None, period: Period | None = None,
           progress: "Progress | None" = None, timeline: DailyBalances | None = None,
           source: Iterable[tuple[str, int, bytes]] | None = None) -> ReplayResult:
    """Feed the files (or ``source``: (where, position, raw) records, e.g. from Kafka)
    through the offline pipeline; rejected lines are reported to ``report`` as
    ``FILE:LINE<TAB>REASONS<TAB>message``."""
    report = report or sys.stderr
    pipeline = replay_pipeline(settings, registry)
    if timeline is not None:
        pipeline.on_close = timeline.observe
    files = [InputFile(str(path)) for path in paths]
    records = source if source is not None else (r for f in files for r in f.records())
    lines = outside = 0
    for where, number, line in records:
        lines += 1
        event = None
        if period is not None:
            try:
                event = parse(line)
            except Rejected:
                pass  # no time to judge by: the pipeline rejects it with its reasons
            else:
                if not period.contains(event_ms(event)):
                    outside += 1
                    continue
        outcome = pipeline.feed(line, source=f"{where}:{number}", topic=str(where),
                                offset=number, parsed=event)
        if outcome == "rejected":
            reasons = pipeline.deadletters[-1]["reasons"]
            print(f"{where}:{number}\t{','.join(r['code'] for r in reasons)}\t"
                  f"{reasons[0]['message']}", file=report)
        if progress is not None and lines % 2048 == 0:
            progress.update(lines, sum(f.done_bytes for f in files))
    if progress is not None:
        progress.finish(lines)
    if close_input:
        pipeline.close_input()
    alerts = sorted(pipeline.alerts.values(), key=lambda a: (a["detected_at"], a["alert_id"]))
    return ReplayResult(pipeline, lines, alerts, [f.provenance() for f in files], outside,
                        timeline)


def kafka_records(settings, topics: list[str], period: Period | None = None,
                  group_id: str | None = None) -> Iterator[tuple[str, int, bytes]]:
    """The records of ``topics`` as (``topic[partition]``, offset, value), merged across
    partitions by event time (ties: topic, partition, offset), each partition in its
    own order: as the live workers' watermark — the least over partitions — sees
    them, and as a file of the same records in event-time order replays. (Broker
    timestamps cannot order them: a settlement system's bulk send puts days of
    event time into one millisecond.)

    Read through a fresh consumer group that is never joined and never commits:
    partitions are assigned by hand, so the live workers' group, offsets and
    assignments are untouched. With ``--from``, each partition starts at the first
    record the broker stamped at ``--from`` less a day and the allowed lateness: a
    record is produced after its event, so nothing earlier can be in the period (the
    margin is for clocks). The end is each partition's end when the replay starts
    (what is produced later is not part of it) — never a timestamp, since a record
    of the period may be sent any time after (a backfill). Records outside the
    period by *event* time are skipped by ``replay``, as in a file."""
    import asyncio

    loop = asyncio.new_event_loop()
    chunks = _kafka_chunks(settings, topics, period, group_id)
    try:
        while True:
            try:  # aiokafka wants its running loop even for its plain calls: run all in it
                chunk = loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
            yield from chunk
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


async def _kafka_chunks(settings, topics, period, group_id):
    import uuid

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from infra.broker import kafka_client_options
    from infra.tansu import true_end_offsets

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
        group_id=group_id or f"{settings.app_id}-replay-{uuid.uuid4().hex[:12]}",
        auto_offset_reset="earliest", **kafka_client_options(settings))
    await consumer.start()
    try:
        parts = []
        await consumer.topics()  # the cluster's metadata, for partitions_for_topic
        for topic in topics:
            found = consumer.partitions_for_topic(topic)
            if not found:
                raise ValueError(f"topic {topic!r} does not exist on "
                                 f"{settings.bootstrap_servers}")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        ends = await true_end_offsets(settings.bootstrap_servers,
                                      await consumer.end_offsets(parts),
                                      kafka_client_options(settings))
        starts = await consumer.beginning_offsets(parts)
        slack_ms = (settings.allowed_lateness_s + 86400) * 1000
        if period is not None and period.start_ms is not None:
            found = await consumer.offsets_for_times(
                {tp: max(period.start_ms - slack_ms, 0) for tp in parts})
            starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in parts}
        for tp in parts:
            consumer.seek(tp, starts[tp])
        buffers: dict = {tp: [] for tp in parts if starts[tp] < ends[tp]}
        position = dict(starts)
        last: dict = {}  # each partition's last event time: the place of unreadable records
        while buffers:
            hungry = [tp for tp, buf in buffers.items() if not buf]
            if hungry:
                got = await consumer.getmany(*hungry, timeout_ms=2000, max_records=5000)
                if not any(got.values()):
                    raise TimeoutError(f"no records from {hungry} before their end offsets "
                                       f"{[ends[tp] for tp in hungry]}")
                for tp, messages in got.items():
                    for m in messages:
                        if m.offset < ends[tp]:
                            last[tp] = _event_time_key(m.value, last.get(tp, 0))
                            buffers[tp].append((last[tp], m.offset, m.value))
                        position[tp] = m.offset + 1
                    buffers[tp].reverse()  # pop() from the end = oldest first
                    if not buffers[tp] and position[tp] >= ends[tp]:
                        del buffers[tp]
                continue
            # Merge until some partition runs dry (it must be refilled before its next
            # record can be placed).
            chunk = []
            while buffers and all(buffers.values()):
                tp = min(buffers, key=lambda t: (buffers[t][-1][0], t.topic, t.partition,
                                                 buffers[t][-1][1]))
                _, offset, value = buffers[tp].pop()
                chunk.append((f"{tp.topic}[{tp.partition}]", offset, value))
                if not buffers[tp] and position[tp] >= ends[tp]:
                    del buffers[tp]
            yield chunk
    finally:
        await consumer.stop()


def _event_time_key(value: bytes | None, fallback: int) -> int:
    """A record's event time (epoch ms) for ordering, read cheaply; a record without
    a readable one keeps its place after the one before it (validation rejects it
    later, with its reason)."""
    from datetime import datetime

    try:
        record = orjson.loads(value)
        moment = record.get("settled_at") or record.get("received_at")
        return int(datetime.fromisoformat(moment).timestamp() * 1000)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return fallback


class Progress:
    """Records done, records per second and the time left, on one terminal line
    (rewritten at most twice a second); silent when the stream is not a terminal."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total_bytes
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, records: int, done_bytes: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.shown < 0.5:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        text = f"\r{records:,} records  {records / elapsed:,.0f}/s"
        if self.total and done_bytes:
            share = min(done_bytes / self.total, 1.0)
            left = elapsed * (1 - share) / share if share else 0
            text += f"  {share:.0%}  ETA {int(left // 60)}:{int(left % 60):02d}"
        self.stream.write(text + "   ")
        self.stream.flush()

    def finish(self, records: int) -> None:
        if self.enabled:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.stream.write(f"\r{records:,} records in {elapsed:.1f} s "
                              f"({records / elapsed:,.0f}/s)\n")
            self.stream.flush()


def write_alerts(alerts: list[dict], path: str | Path) -> None:
    with open(path, "wb") as out:
        for alert in alerts:
            out.write(orjson.dumps(alert) + b"\n")


def write_scores(scores: list[dict], path: str | Path) -> int:
    """The contract's ``--scores-out`` lines; returns how many."""
    with open(path, "wb") as out:
        for score in scores:
            out.write(orjson.dumps(score) + b"\n")
    return len(scores)


def write_balances(result: ReplayResult, registry, path: str | Path) -> int:
    books = with_registry_pools(books_in(result.pipeline.state), registry)
    return write_balances_csv(balance_rows(books), path)


def summary_lines(result: ReplayResult) -> list[str]:
    p = result.pipeline
    out = [f"{result.lines} records: {p.counts['accepted']} processed, "
           f"{p.counts['duplicate']} duplicates, {p.counts['rejected']} rejected"
           + (f", {result.outside_period} outside the period" if result.outside_period
              else "")]
    if p.reasons:
        out.append("rejected by reason: " + ", ".join(f"{code} {n}" for code, n in
                                                       sorted(p.reasons.items())))
    if p.counts["rule_failed"]:
        out.append(f"rule failures (dead-lettered): {p.counts['rule_failed']}")
    booked_late = sum(book.get("late", 0) for book in books_in(p.state).values())
    if p.counts["late"] or booked_late:
        out.append(f"late records (arrived after their day was closed: still counted, the "
                   f"day not judged again): {p.counts['late']} copies at the detect stage, "
                   f"{booked_late} in the pool balances")
    by_rule = Counter(a["rule_id"] for a in result.alerts)
    out.append(f"{len(result.alerts)} alerts" + (": " + ", ".join(
        f"{rule} {n}" for rule, n in sorted(by_rule.items())) if by_rule else ""))
    return out
