"""The live pipeline, top to bottom: settlements in, alerts out.

    fundwatch.settlements ┐
    fundwatch.contributions┴─► ingest ──(valid; batched by record id's partition)─► internal.admit
                                 │ invalid ─► fundwatch.deadletter
    internal.admit ─► admit [ledger table] ──(accepted; batched, with its rule keys)─► internal.detect
      (partitioned by the id a record must be compared with: its own, or for a
       reversal the original's, so duplicates, conflicts and reversals meet)
                                 │ conflicting / bad reversal ─► fundwatch.deadletter
                                 │ duplicate ─► counted, nothing else
    internal.detect ─► detect [rule state table] ──► fundwatch.alerts ─► alert sink ─► store

Every stage calls the detection core's plain functions (``streams.records``,
``streams.admission``, ``rules.core``); this module only moves records between them
and keeps their state in changelog-backed Faust tables, so a restarted worker
recovers its ledger and rule state. The internal hops carry batches, one message
per destination partition, because Faust's cost is per message; admission and
detect take the messages waiting and handle each partition's together, so that a
state slot is decoded and written once per batch. Delivery is at-least-once;
duplicates and redeliveries are harmless because admission, rules and the store
are idempotent.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from datetime import datetime

import faust
import faust.streams as faust_streams
import orjson
from aiokafka import errors as kafka_errors
from sqlalchemy.exc import InterfaceError, OperationalError

from infra.broker import kafka_client_options
from infra.config import Settings
from infra.topics import MAX_MESSAGE_BYTES
from infra.tansu import patch_faust_recovery
from streams import drain, heap, offset_guard, tables
from rules.alerts import SHANGHAI
# partition_of: a batch is sent to the partition its records' keys hash to, so the
# table writes made while handling it land in the changelog partition they always did.
from rules.core import (ClosingIndex, Detection, DetectionCore, load_rules,  # noqa: F401
                        partition_of)
from rules.registry import Registry
from sinks.store import AlertStore, alert_problems
from streams.admission import FORGOTTEN, LedgerRetention, admit, iso_day
from streams.changelog import ChangelogWriter, EncodedValues, StateOverlay
from streams.deadletter import deadletter_record
from streams.latency import LatencyRecorder
from streams.offline import timer_record
from streams.records import (Reason, Rejected, Settlement, from_canonical, parse,
                             to_canonical)
from streams.watermark import event_ms, is_late, last_midnight, low_mark, merge, to_ms

log = logging.getLogger("fundwatch.worker")

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
       "value_serializer": "raw"}


def _credentials(settings: Settings):
    if settings.sasl_mechanism:
        return faust.SASLCredentials(username=settings.sasl_username,
                                     password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism,
                                     ssl_context=settings.ssl_context())
    if settings.security_protocol.upper() == "SSL":
        return faust.SSLCredentials(settings.ssl_context())
    return None


class FetchWait:
    """The fetch wait a consumer asks the broker for next: ``short_ms`` while records
    come, ``quiet_ms`` once none has come for ``quiet_after_s`` (``quiet_ms`` 0: the
    short wait always). Tansu answers a fetch only when its wait is up, so a short
    wait is what lets a record cross each internal hop quickly, and what an idle
    worker pays for by polling.

    >>> wait = FetchWait(20, 200, quiet_after_s=1.0, now=0.0)
    >>> wait.after_fetch(False, now=0.5), wait.after_fetch(False, now=1.0)
    (20, 200)
    >>> wait.after_fetch(True, now=7.0), wait.after_fetch(False, now=7.9)
    (20, 20)
    >>> FetchWait(20, 0, now=0.0).after_fetch(False, now=60.0)
    20
    """

    def __init__(self, short_ms: int, quiet_ms: int, quiet_after_s: float = 1.0,
                 now: float | None = None) -> None:
        self.short_ms = short_ms
        self.quiet_ms = quiet_ms or short_ms
        self.quiet_after_s = quiet_after_s
        self.last_records = time.monotonic() if now is None else now

    def after_fetch(self, brought_records: bool, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        if brought_records:
            self.last_records = now
        return (self.quiet_ms if now - self.last_records >= self.quiet_after_s
                else self.short_ms)


def _fetch_waits(short_ms: int, quiet_ms: int) -> None:
    """Make Faust's worker consumer fetch with :class:`FetchWait`'s waits (Faust 0.11
    hard-codes 1,500 ms in ``_create_worker_consumer``; see Settings.fetch_max_wait_ms
    and fetch_quiet_wait_ms). Only that consumer: the fetcher's wait is changed per
    request, between aiokafka building one and the next."""
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread, "_fundwatch_original_create", thread._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = short_ms  # read by aiokafka when it starts the fetcher
        start = consumer.start

        async def start_with_waits():
            await start()
            consumer._fetcher._fundwatch_wait = FetchWait(short_ms, quiet_ms)

        consumer.start = start_with_waits
        return consumer

    thread._fundwatch_original_create = original
    thread._create_worker_consumer = create
    if getattr(Fetcher, "_fundwatch_waits", False):
        return
    fetch = Fetcher._proc_fetch_request

    async def fetch_then_choose_wait(self, assignment, node_id, request):
        # aiokafka returns True when the answer added records (or must wake a reader).
        brought = await fetch(self, assignment, node_id, request)
        wait = getattr(self, "_fundwatch_wait", None)
        if wait is not None:
            self._fetch_max_wait_ms = wait.after_fetch(bool(brought))
        return brought

    Fetcher._proc_fetch_request = fetch_then_choose_wait
    Fetcher._fundwatch_waits = True


def build_app(settings: Settings, core: DetectionCore | None = None,
              store: AlertStore | None = None) -> faust.App:
    core = core or DetectionCore(load_rules(settings.rules, registry=load_registry(settings),
                                             source=settings.config_path),
                                 partitions=settings.partitions)
    patch_faust_recovery(settings.bootstrap_servers, kafka_client_options(settings))
    os.makedirs(os.path.join(settings.data_dir, settings.app_id), exist_ok=True)
    _fetch_waits(settings.fetch_max_wait_ms, settings.fetch_quiet_wait_ms)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",  # tables are rebuilt from their changelog topics at start
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        datadir=os.path.join(settings.data_dir, "{conf.id}"),
        web_enabled=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        # With batched hops, a short linger lets the batches of several partitions
        # share one produce request (measured: ~1.3× on top of batching).
        producer_linger=0.01,
        # Room for a stage's table writes of one input batch in one record batch
        # (streams.changelog); Faust's default is 16 KB.
        producer_max_batch_size=MAX_BATCH_BYTES,
        # A dead letter carries its record whole, an admission hop message its text
        # beside its canonical form (infra.topics): over Faust's default limit of
        # 1,000,000 bytes for records under 1 MB (a valid one of 931,535 bytes made
        # an admission message of 2,091,308).
        producer_max_request_size=MAX_MESSAGE_BYTES,
        # Settings.compression_type: the broker's cost follows the bytes written.
        producer_compression_type=(None if settings.compression_type == "none"
                                   else settings.compression_type),
        # Faust keeps one standby copy of every other worker's table partitions by
        # default, replaying their changelogs as they are written: measured, that made
        # two workers on two cores slower than one (0.87×; CPU per worker as for the
        # whole stream). Kafka Streams' default is none too; see Settings.
        table_standby_replicas=settings.standby_replicas,
    )
    app.sensors.add(SendFailures())
    worker_name = f"{socket.gethostname()}:{os.getpid()}"
    # This process, apart from any before it with the same host and pid (a container
    # restarted): the detect stage counts what it handled per sending process.
    instance = uuid.uuid4().hex[:12]
    P = settings.partitions

    source_topics = {settings.topic("settlements"), settings.topic("contributions")}
    offset_guard.patch(source_topics | {settings.topic(name) for name in
                                        ("admit", "detect", "alerts")})
    drain.patch()  # records delivered without four tasks each (streams/drain.py)
    sources = app.topic(*sorted(source_topics), **RAW)
    admit_topic = app.topic(settings.topic("admit"), partitions=P, internal=True, **RAW)
    detect_topic = app.topic(settings.topic("detect"), partitions=P, internal=True, **RAW)
    alerts_topic = app.topic(settings.topic("alerts"), **RAW)
    deadletter_topic = app.topic(settings.topic("deadletter"), **RAW)
    metrics_topic = app.topic(settings.topic("metrics"), **RAW)
    # What the online models scored (as `replay --scores-out` writes it): for
    # monitoring model quality outside the program.
    scores_topic = app.topic(settings.topic("scores"), **RAW)

    # settlement/contribution id → digest, amounts, person, source position
    # The two large tables hold their values as JSON bytes (streams.changelog):
    # read them through EncodedValues.
    tables.prepare(settings, app)  # memory or RocksDB (streams.tables)
    ledger = app.Table("ledger", default=None, partitions=P, value_type=bytes,
                       **tables.large_table_options(settings, "ledger"))
    # "<rule_id>|<key>" → the rule's JSON state
    rule_state = app.Table("rule-state", default=None, partitions=P, value_type=bytes,
                           **tables.large_table_options(settings, "rule-state"))
    ledger_values, rule_values = (EncodedValues(table, piece_bytes=settings.state_piece_bytes,
                                                keep_bytes=settings.state_kept_bytes)
                                  for table in (ledger, rule_state))
    # Event-time progress (streams.watermark). Ingest, this process: per source
    # channel ("topic/partition") the newest event time and the last offset it
    # processed, and when it first saw each assigned channel. Admission: per admit
    # partition, the view of every channel it has heard of. Detect: per detect
    # partition, every admit partition's view and the last midnight closed.
    newest: dict[str, int] = {}
    processed: dict[str, int] = {}
    first_assigned: dict[str, float] = {}
    caught_up: dict[str, tuple] = {}  # channel → (offset read to its end, since when)
    last_report: dict = {}
    admit_clock = app.Table("admit-clock", default=None, partitions=P)
    detect_clock = app.Table("detect-clock", default=None, partitions=P)
    lateness_ms = settings.allowed_lateness_s * 1000
    validate_rejected = {"count": 0}  # the dead-letter topic is its durable record
    latency = LatencyRecorder()
    # Copies sent to / handled by the detect stage since start (this process): lets a
    # benchmark see when the last stage, not just admission, has caught up. Handled
    # copies are also counted per sending process (``instance``): after a restart the
    # detect stage re-reads copies its killed predecessor sent, which this process
    # never routed, and with several workers one's copies are handled by the others.
    flow = {"routed": 0, "detected": 0}
    # When this process began its first source batch, and when it last did work that
    # moves the counts a watcher accounts records by (a record validated away,
    # admitted, or handled by the detect stage), in epoch seconds: a benchmark reads
    # a stream's ends from these, not from when the once-a-second metrics arrive.
    worked = {"from": None, "until": None}
    detected_from: dict[str, int] = {}
    # Held while a batch of source records is parsed and sent on, and while the
    # timer reports progress between batches. Without it the timer, running while
    # the batch waited on the producer, reported the batch's newest event time (and
    # its channels as read to the end) ahead of the batch's own records: admission
    # forwarded a watermark the records had not caught up with, and under load a
    # record of the batch reached the detect stage after its day had been closed.
    progress_lock = asyncio.Lock()
    closed_here: set[int] = set()  # detect partitions this process has run a close for
    detect_handled: dict[int, int] = {}  # detect partition → last offset handled here

    # The two tables written for every record go to their changelogs one record
    # batch per input batch (streams.changelog), not one message per write.
    def aiokafka_producer():
        return app.producer._ensure_producer()  # Faust's own: flushed before commits

    ledger_log = ChangelogWriter(ledger_values, aiokafka_producer, stop_on_failed_send)
    rule_log = ChangelogWriter(rule_values, aiokafka_producer, stop_on_failed_send)
    # Per detect partition, the state slots a daily close must visit (rules.core
    # ClosingIndex): built from the table at the partition's first close after an
    # assignment (recovery fills the table without passing here), then kept by
    # the writes.
    closing: dict[int, ClosingIndex] = {}

    def closing_index(partition: int) -> ClosingIndex:
        if partition not in closing:
            closing[partition] = ClosingIndex(
                core, lambda slot: core.slot_partition(slot) == partition)
        return closing[partition]

    async def save_rule_state(partition: int, changes: dict) -> None:
        closing_index(partition).update(changes)
        await rule_log.write(partition, changes)

    @app.on_partitions_assigned.connect
    async def _assigned(app, assigned, **kwargs) -> None:
        closing.clear()  # the tables are about to be recovered anew

    async def dead_letter(message, reasons, stage):
        record = deadletter_record(message["raw"], reasons, stage=stage,
                                   topic=message["topic"], partition=message["partition"],
                                   offset=message["offset"], key=message["key"])
        await deadletter_topic.send(key=message["key"], value=orjson.dumps(record))

    async def send_batches(topic, groups: dict[int, list], progress: dict,
                           sender: str | None = None) -> None:
        """One message per partition and batch (split below Kafka's 1 MiB default
        message size, and at BATCH_POSITIONS items). Faust's cost is per message, not
        per byte: measured, batching the two internal hops made the whole path 2–3×
        faster for the same output.

        Every partition gets a message, even with no records: it carries the
        sender's event-time progress (``streams.watermark``), on the last chunk so
        that it follows the records it covers. ``sender`` (this process) goes on
        every chunk: the detect stage counts the copies it handled per sender."""
        for partition in range(P):
            items = groups.get(partition, ())
            chunks: list[list[bytes]] = [[]]
            size = 0
            for item in items:
                encoded = orjson.dumps(item)
                if chunks[-1] and (size + len(encoded) > MAX_BATCH_BYTES
                                   or len(chunks[-1]) == BATCH_POSITIONS):
                    chunks.append([])
                    size = 0
                chunks[-1].append(encoded)
                size += len(encoded) + 1
            for n, chunk in enumerate(chunks, 1):
                fields = progress if n == len(chunks) else {}
                if sender is not None:
                    fields = {**fields, "o": sender}
                tail = b"," + orjson.dumps(fields)[1:] if fields else b"}"
                await topic.send(key=None, partition=partition,
                                 value=b'{"items":[' + b",".join(chunk) + b"]" + tail)

    @app.agent(sources)
    async def ingest(stream):
        """Validate each record; valid ones go on, batched per admission partition
        (the partition their key — their own id, or a reversal's original — hashes to)."""
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_WAIT_S):
            async with progress_lock:
                await to_the_end(ingest_batch(events))

    async def ingest_batch(events) -> None:
        try:
            if worked["from"] is None:
                worked["from"] = time.time()
            rejected_before = validate_rejected["count"]
            groups: dict[int, list] = {}
            for item in events:
                msg = item.message
                channel = f"{msg.topic}/{msg.partition}"
                processed[channel] = msg.offset
                source = {"raw": msg.value, "topic": msg.topic,
                          "partition": msg.partition, "offset": msg.offset, "key": msg.key}
                try:
                    event = parse(msg.value)
                except Rejected as exc:
                    validate_rejected["count"] += 1
                    await dead_letter(source, exc.reasons, "validate")
                    latency.record_since(msg.timestamp, time.time())
                    continue
                except Exception as exc:  # noqa: BLE001 - a record never stops the worker
                    log.exception("ingest failed on %s/%s/%s", msg.topic, msg.partition,
                                  msg.offset)
                    validate_rejected["count"] += 1
                    await dead_letter(source, [internal_error(exc)], "validate")
                    continue
                t = event_ms(event)
                newest[channel] = max(newest.get(channel, t), t)
                key = admission_key(event).encode()
                groups.setdefault(partition_of(key, P), []).append({
                    "src": f"{msg.topic}/{msg.partition}/{msg.offset}",
                    "ts": msg.timestamp,  # producer's CreateTime (Faust: seconds)
                    "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                    "key": msg.key.decode("utf-8", "backslashreplace") if msg.key else None,
                    "raw": msg.value.decode("utf-8"),  # parse() accepted it: UTF-8
                    # Validated here once: admission rebuilds the event from its
                    # canonical form (a third of the cost of parsing it again) and
                    # keeps the raw bytes for what it dead-letters.
                    "event": to_canonical(event),
                })
            report = source_report()
            await send_batches(admit_topic, groups, {"wm": report})
            last_report.clear()
            last_report.update(report)
            if validate_rejected["count"] != rejected_before:
                worked["until"] = time.time()
        except Exception as exc:  # noqa: BLE001
            stop_hard("ingest", exc)

    def source_report() -> dict[str, list]:
        """[newest event time, idle] of every source partition assigned here.

        Idle = nothing left to read, judged afresh at every report for every channel
        (not only those in the batch: the fetch that brought one partition's records
        also tells whether the others have new ones), and only once it has stayed so
        for CAUGHT_UP_S: the end of a partition is known from the last fetch answer,
        which a loaded worker may not have renewed while the producers write on.

        A channel this process has not read from since it started is busy with no
        time of its own (the tables keep the time it had) while the broker holds
        records past its committed position, or until records have been able to
        flow for IDLE_AFTER_S and it delivered none: after a restart its old "idle"
        must not let the watermark run ahead of records it is about to deliver, and
        a loaded worker may take longer than that to read its first records."""
        report = {}
        now = time.monotonic()
        if app.in_recovery or app.rebalancing:
            # Quiet is counted from when records can flow: a worker rebuilding its
            # tables (seen: 20 s after a crash) reads no source partition yet.
            first_assigned.clear()
        for tp in app.consumer.assignment():
            if tp.topic not in source_topics:
                continue
            channel = f"{tp.topic}/{tp.partition}"
            first_assigned.setdefault(channel, now)
            try:
                highwater = app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - no fetch answer yet: busy
                highwater = None
            if channel in processed:
                idle = False
                if highwater is None or processed[channel] + 1 < highwater:
                    caught_up.pop(channel, None)
                else:
                    offset, since = caught_up.get(channel, (None, now))
                    if offset != processed[channel]:  # read on since: caught up anew
                        offset, since = processed[channel], now
                    caught_up[channel] = (offset, since)
                    idle = now - since >= CAUGHT_UP_S
                report[channel] = [newest.get(channel), idle]
            else:
                quiet_for = now - first_assigned[channel]
                quiet = not (app.in_recovery or app.rebalancing) and (
                    quiet_for >= IDLE_AFTER_S and not waiting(tp, highwater)
                    or quiet_for >= 6 * IDLE_AFTER_S)  # its committed position unknown
                report[channel] = [None, quiet]
        return report

    def waiting(tp, highwater: int | None) -> bool:
        """Whether the broker holds records of a partition this process has not read
        from yet past the group's committed position (Faust's own record of it; a
        consumer without one falls back to quiet-for-IDLE_AFTER_S)."""
        committed = getattr(app.consumer, "_committed_offset", {}).get(tp)
        return highwater is not None and highwater > (committed or 0)

    @app.timer(STALL_AFTER_S / 2)
    async def unstick_partitions():
        """A partition whose consumer stands past records the broker holds, with
        nothing after them to show the jump, is sought back (streams/offset_guard.py)."""
        if app.should_stop or app.rebalancing or app.in_recovery:
            return
        try:
            await app.consumer.fundwatch_unstick(STALL_AFTER_S)
        except offset_guard.ConsumerStuck as exc:
            stop_hard("fetch", exc)
        except Exception as exc:  # noqa: BLE001 - a rebalance began meanwhile: next time
            # Said, not hidden: a check that fails every time guards nothing.
            log.warning("stall check skipped (%s: %s)", type(exc).__name__, exc)

    @app.timer(IDLE_CHECK_S)
    async def report_sources():
        """Between batches, tell admission when a source partition turns idle (the
        last day of a replay closes; a quiet night does not hold every day open)."""
        async with progress_lock:
            try:
                report = source_report()
            except Exception:  # noqa: BLE001 - not started or rebalancing: next time
                return
            if report and report != last_report:
                try:
                    await send_batches(admit_topic, {}, {"wm": report})
                except Exception as exc:  # noqa: BLE001
                    stop_hard("ingest", exc)
                last_report.clear()
                last_report.update(report)

    @app.agent(admit_topic)
    async def admission(stream):
        """Duplicates, conflicting duplicates and reversals, against the ledger."""
        async for events in stream.take_events(STAGE_MESSAGES, within=STAGE_WAIT_S):
            await to_the_end(admission_messages(events))

    async def admission_messages(events) -> None:
        """The messages waiting, each partition's as one batch (see STAGE_MESSAGES)."""
        try:
            for partition, batch in by_partition(events):
                with handling(batch[-1]):
                    await admit_batch(partition, [(event.message.offset,
                                                   orjson.loads(event.message.value))
                                                  for event in batch])
        except Exception as exc:  # noqa: BLE001
            stop_hard("admission", exc)

    async def admit_batch(partition: int, messages: list[tuple[int, dict]]) -> None:
        """``messages``: (offset, decoded message) of one admit partition, in order."""
        tally: dict[str, int] = {}
        groups: dict[int, list] = {}
        entries = StateOverlay(ledger_values)  # the batch's ledger writes, saved together
        view = admit_clock.get(str(partition)) or {}
        retention = (LedgerRetention(settings.ledger_retention_days, str(partition))
                     if settings.ledger_retention_days else None)
        copies = 0  # (record, rule key) pairs sent on: what the detect stage counts
        for offset, message in messages:
            copies += await admit_items(partition, offset, message["items"], entries,
                                        tally, groups, retention)
            if message.get("wm"):
                view = merge(view, message["wm"])
        if retention is not None:
            # The partition's own progress, as the replay's one channel: what it has
            # passed on, less the lateness. The index of the batch's writes and the
            # forgetting go to the changelog with the entries.
            low = low_mark([view])
            if low is None:
                retention.save(entries)
            else:
                retention.expire(entries, low - lateness_ms, budget=FORGET_PER_BATCH)
        # The partition's outcome counts (reconciliation, the demo) live in the ledger
        # itself and go to the changelog in the same record batch as the entries
        # they count: a worker stopped part-way keeps both or neither. (In a table
        # of their own, written after the ledger's batch was handed to the
        # producer, a stop in between kept the entries without their counts, and
        # the batch's records, redelivered, counted as redeliveries only.)
        if tally:
            counts = dict(entries.get(COUNTS + str(partition)) or {})
            for outcome, n in tally.items():
                counts[outcome] = counts.get(outcome, 0) + n
            entries[COUNTS + str(partition)] = counts
        await ledger_log.write(partition, entries.changed)
        if view != (admit_clock.get(str(partition)) or {}):
            admit_clock[str(partition)] = view
        await send_batches(detect_topic, groups, {"q": str(partition), "wm": view},
                           sender=instance)
        flow["routed"] += copies
        if tally:
            worked["until"] = time.time()

    async def admit_items(partition: int, offset: int, batch, entries, tally: dict,
                          groups: dict, retention: LedgerRetention | None) -> int:
        """One admit message's records against the ledger (``entries``): counted in
        ``tally``, the accepted ones' copies added to ``groups`` (per detect
        partition). Returns the number of copies added."""
        copies = 0
        for index, wrapped in enumerate(batch):
            raw = wrapped["raw"].encode("utf-8")
            original = {**wrapped, "raw": raw,
                        "key": wrapped["key"].encode() if wrapped["key"] else None}
            # This record's place in the admission partition: rules apply each once.
            position = (partition, offset * BATCH_POSITIONS + index)
            try:
                canonical = wrapped.get("event")
                if canonical is None:  # sent by a version that did not ship it
                    canonical = to_canonical(parse(raw))
                event = from_canonical(canonical)
                verdict = admit(event, entries, wrapped["src"], position=position,
                                canonical=canonical, retention=retention)
            except Exception as exc:  # noqa: BLE001 - a record never stops the worker
                log.exception("admission failed on %s", wrapped["src"])
                tally["rejected"] = tally.get("rejected", 0) + 1
                await dead_letter(original, [internal_error(exc)], "admit")
                continue
            # A redelivery (same broker position, decided before a crash) repeats its
            # decision but is counted apart, so every input counts exactly once.
            outcome = "redelivered" if verdict.redelivery else verdict.outcome
            tally[outcome] = tally.get(outcome, 0) + 1
            if verdict.outcome == "rejected":
                await dead_letter(original, verdict.reasons, "admit")
                latency.record_since(wrapped.get("ts"), time.time())
                continue
            if verdict.outcome == "duplicate":
                latency.record_since(wrapped.get("ts"), time.time())
                continue
            # One item per detect partition the record goes to, with every rule key
            # of it there: the event is decoded once per partition, not once per key.
            routes = core.routes(event)
            keys_at: dict[int, list] = {}
            for kind, key in routes:
                keys_at.setdefault(partition_of(f"{kind}:{key}".encode(), P),
                                   []).append([kind, key])
            for detect_partition, keys in keys_at.items():
                groups.setdefault(detect_partition, []).append(
                    {"routes": keys, "event": canonical, "src": wrapped["src"],
                     "ts": wrapped.get("ts"),
                     # A redelivered record keeps the position of its first acceptance.
                     "pos": list(verdict.position)})
            copies += len(routes)
            if not routes:
                latency.record_since(wrapped.get("ts"), time.time())
        return copies

    @app.agent(detect_topic)
    async def detect(stream):
        """Every rule keyed by each record's key, with its state from the table."""
        async for events in stream.take_events(STAGE_MESSAGES, within=STAGE_WAIT_S):
            await to_the_end(detect_messages(events))

    async def detect_messages(events) -> None:
        """The messages waiting, each partition's as one batch (see STAGE_MESSAGES),
        cut where a message's progress closes a day: the close must see the state of
        the records before it and none after."""
        try:
            # A record goes to each detect partition one of its keys hashes to: a
            # worker holding several of them decodes it once for all (measured: the
            # decoding was a twentieth of a worker's time). Keyed by its source
            # position, which names one content.
            decoded: dict[str, object] = {}
            for partition, batch in by_partition(events):
                with handling(batch[-1]):
                    await detect_partition_batch(partition, [event.message for event in batch],
                                                 decoded)
        except Exception as exc:  # noqa: BLE001
            stop_hard("detect", exc)

    async def detect_partition_batch(partition: int, messages, decoded: dict) -> None:
        pending = DetectBatch(partition, decoded)
        for msg in messages:
            message = orjson.loads(msg.value)
            # A message this process handled before, delivered again (a partition
            # sought back by streams/offset_guard.py): the rules skip its copies by
            # position; it must not count twice as handled, nor its copies as late.
            first = msg.offset > detect_handled.get(partition, -1)
            await pending.add(message["items"], first, message.get("o"))
            if "q" in message:
                # advance() folds the progress in again, after the save: saving
                # may have changed the clock (its count of late copies).
                if clock_after(partition, message["q"], message["wm"])[1]:
                    await pending.save()
                await advance(partition, message["q"], message["wm"])
            detect_handled[partition] = max(msg.offset, detect_handled.get(partition, -1))
        await pending.save()

    def clock_after(partition: int, sender: str, view: dict) -> tuple[dict, datetime | None]:
        """A detect partition's clock with an admit partition's progress folded in, and
        the midnight the days before which are now to be closed (None: no close)."""
        clock = detect_clock.get(str(partition)) or {"views": {}, "closed": None}
        views = {**clock["views"], sender: view}
        clock = {**clock, "views": views}
        low = low_mark(views.values()) if len(views) == P else None
        if low is None or not core.has_timers:
            return clock, None
        midnight = last_midnight(low - lateness_ms)
        if clock["closed"] is not None and to_ms(midnight) <= clock["closed"] \
                and partition not in closed_here:
            # This process's first close of the partition runs the last one again (a
            # close is idempotent): a worker killed part-way through it may have saved
            # this clock but not every state the close wrote (another table, another
            # changelog).
            midnight = datetime.fromtimestamp(clock["closed"] / 1000, SHANGHAI)
            clock["closed"] = None
        if clock["closed"] is None or to_ms(midnight) > clock["closed"]:
            return clock, midnight
        return clock, None

    async def advance(partition: int, sender: str, view: dict) -> None:
        """Fold an admit partition's progress in; close the days the watermark passed."""
        clock, midnight = clock_after(partition, sender, view)
        if midnight is not None:
            slots = closing_index(partition).slots_due(rule_values)
            log.info("detect partition %d: days before %s complete (watermark %s); "
                     "closing %d keys", partition, midnight.isoformat(),
                     iso_ms(low_mark(clock["views"].values()) - lateness_ms), len(slots))
            detection = core.close(slots, rule_values, midnight)
            await send_alerts(detection)
            for score in detection.scores:
                await scores_topic.send(key=score["settlement_id"].encode(),
                                        value=orjson.dumps(score))
            await save_rule_state(partition, detection.updates)
            if detection.failures:
                await dead_letter(
                    {"raw": timer_record(midnight), "topic": settings.topic("detect"),
                     "partition": partition, "offset": None, "key": None},
                    [Reason("rule_failed", message) for _, message in detection.failures],
                    "detect")
            clock["closed"] = to_ms(midnight)
            closed_here.add(partition)
        if clock != detect_clock.get(str(partition)):
            detect_clock[str(partition)] = clock

    async def send_alerts(detection) -> None:
        """Alerts first, acknowledged, then the state: see DetectionCore.commit."""
        acks = [await alerts_topic.send(key=alert["alert_id"].encode(),
                                        value=orjson.dumps(alert))
                for alert in detection.alerts]
        for ack in acks:
            await ack

    class DetectBatch:
        """One detect partition's records against the rule state, through an overlay:
        each state slot is read and written once per batch, not once per record (a
        pool's book changes with every record of the pool; a province's month of
        management figures is tens of kilobytes of JSON), and the batch's writes go
        to the changelog as one record batch (streams.changelog). The alerts of the
        whole batch are acknowledged before any of its state is saved (see
        DetectionCore.commit): a crash in between re-runs the batch."""

        def __init__(self, partition: int, decoded: dict) -> None:
            self.partition = partition
            self.decoded = decoded  # source position → event, shared by the partitions
            self._start()

        def _start(self) -> None:
            self.overlay = StateOverlay(rule_values)
            self.alerts: list[dict] = []
            # What the batch's first-time messages add to the counts once it is saved.
            self.late = self.copies = 0
            self.times: list = []  # their records' producer timestamps (latency)
            self.senders: dict[str, int] = {}

        async def add(self, items, first: bool, sender: str | None) -> None:
            closed = (detect_clock.get(str(self.partition)) or {}).get("closed")
            for routed in items:
                event = self.decoded.get(routed["src"])
                if event is None:
                    event = self.decoded[routed["src"]] = from_canonical(routed["event"])
                position = tuple(routed["pos"])
                # (Items sent by a version before "routes" carry one key each.)
                keys = routed.get("routes") or ((routed["kind"], routed["key"]),)
                for kind, key in keys:
                    detection = core.process(kind, key, event, self.overlay,
                                             position=position)
                    core.commit(self.overlay, detection)
                    self.alerts.extend(detection.alerts)
                    if detection.failures:
                        await rule_failed(routed, detection)
                if first:
                    self.late += len(keys) * is_late(event, closed)
                    self.copies += len(keys)
                    self.times.append(routed.get("ts"))
                    if sender is not None:
                        self.senders[sender] = self.senders.get(sender, 0) + len(keys)

        async def save(self) -> None:
            if not (self.overlay.changed or self.alerts or self.copies):
                return
            await send_alerts(Detection(self.alerts, [], {}))
            await save_rule_state(self.partition, self.overlay.changed)
            if self.late:
                clock = detect_clock.get(str(self.partition)) or {"views": {}, "closed": None}
                detect_clock[str(self.partition)] = {**clock,
                                                     "late": clock.get("late", 0) + self.late}
            now = time.time()
            for ts in self.times:
                latency.record_since(ts, now)
            flow["detected"] += self.copies
            if self.copies:
                worked["until"] = now
            for sender, n in self.senders.items():
                detected_from[sender] = detected_from.get(sender, 0) + n
            self._start()

    async def rule_failed(routed, detection) -> None:
        if detection.failures:
            topic, partition, offset = routed["src"].rsplit("/", 2)
            await dead_letter(
                {"raw": orjson.dumps(routed["event"]), "topic": topic,
                 "partition": int(partition), "offset": int(offset), "key": None},
                [Reason("rule_failed", message) for _, message in detection.failures],
                "detect")

    if store is not None or settings.alert_store_url():
        alert_store = store or AlertStore(settings.alert_store_url())

        @app.agent(alerts_topic)
        async def alert_sink(stream):
            """Alerts into the store; the upsert makes redelivery harmless. A message
            that is not alert/v1 goes to the dead-letter topic with its reasons (a
            producer's bug must not stop the sink, nor be dropped unseen)."""
            async for events in stream.take_events(500, within=0.5):
                await to_the_end(sink_batch(events))

        async def sink_batch(events) -> None:
            alerts = []
            for item in events:
                msg = item.message
                problems = _alert_problems(msg.value)
                if problems:
                    log.warning("alert at %s/%s/%s rejected: %s", msg.topic,
                                msg.partition, msg.offset, "; ".join(problems))
                    await dead_letter(
                        {"raw": msg.value, "topic": msg.topic, "partition": msg.partition,
                         "offset": msg.offset, "key": msg.key},
                        [Reason("invalid_alert", p) for p in problems], "alert_sink")
                    continue
                alerts.append(orjson.loads(msg.value))
            # The store being down must not lose alerts: hold the batch (and
            # with it this partition) and retry until it is back.
            delay = 0.5
            while alerts:
                try:
                    await asyncio.to_thread(alert_store.upsert_many, alerts)
                    break
                except (OperationalError, InterfaceError) as exc:
                    if app.should_stop:
                        # Asked to stop while the store is down: waiting for it kept
                        # the worker from stopping at all (the batch runs to its end,
                        # see to_the_end). Leave the batch uncommitted instead: the
                        # next worker reads these alerts again.
                        stop_hard("alert_sink", exc)
                    log.exception("alert store unavailable; retrying in %.1f s", delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                except Exception:  # noqa: BLE001
                    # The database refused the data itself (a value it cannot
                    # hold): store the batch one by one and dead-letter only
                    # what it refuses, rather than retry a refusal forever.
                    log.exception("alert store refused a batch; storing one by one")
                    alerts = await store_one_by_one(alerts)

        async def store_one_by_one(alerts: list[dict]) -> list[dict]:
            """Returns the alerts still to store (the database went away meanwhile)."""
            for i, alert in enumerate(alerts):
                try:
                    await asyncio.to_thread(alert_store.upsert, alert)
                except (OperationalError, InterfaceError):
                    return alerts[i:]
                except Exception as exc:  # noqa: BLE001
                    raw = orjson.dumps(alert)
                    await dead_letter({"raw": raw, "topic": alerts_topic.get_topic_name(),
                                       "partition": None, "offset": None,
                                       "key": alert["alert_id"].encode()},
                                      [Reason("store_refused", f"the alert store refused "
                                              f"this alert ({type(exc).__name__}: {exc})")],
                                      "alert_sink")
            return []

        routing = settings.routing()
        if routing.routes:
            from sinks.notify import Dispatcher

            dispatcher = Dispatcher(alert_store, routing)
            notify_stop = threading.Event()

            # Every worker runs a dispatcher over the shared store; leases keep them
            # from sending the same notification. Apprise blocks, so it runs in a
            # thread of its own, away from the event loop.
            @app.task
            async def deliver_notifications():
                thread = threading.Thread(target=dispatcher.run, args=(notify_stop,),
                                          name="fundwatch-notify", daemon=True)
                thread.start()

            @app.on_before_shutdown.connect
            def _stop_notifications(app, **kwargs) -> None:
                notify_stop.set()

    @app.timer(1.0)
    async def publish_metrics():
        counts = {f"{p}/{outcome}": n for p in range(P)
                  for outcome, n in (ledger_values.get(COUNTS + str(p)) or {}).items()}
        await metrics_topic.send(key=worker_name.encode(), value=orjson.dumps({
            "worker": worker_name,
            "admit": counts,
            "validate_rejected_since_start": validate_rejected["count"],
            "latency": latency.summary(),
            "flow": {**flow, "instance": instance, "detected_from": dict(detected_from),
                     "worked_from": worked["from"], "worked_until": worked["until"]},
            # The source partitions this worker reads: how a group's share is seen.
            "sources": sorted(f"{tp.topic}/{tp.partition}"
                              for tp in app.consumer.assignment() if tp.topic in source_topics),
            # Per detect partition: the last midnight its closing rules were run for
            # (epoch ms) — how far the stream's days are judged.
            "closed": {p: clock["closed"] for p, clock in detect_clock.items()
                       if clock and clock.get("closed") is not None},
            # Per detect partition: copies that arrived after their day was closed
            # (streams.watermark.is_late); the replay counts the same.
            "late": {p: clock.get("late", 0) for p, clock in detect_clock.items() if clock},
            # Per admission partition: the first day its ledger still remembers
            # (streams.admission.LedgerRetention); a record before it is rejected.
            "ledger_remembers_from": {
                p: iso_day(day) for p in map(str, range(P))
                if (day := ledger_values.get(FORGOTTEN + p)) is not None},
        }))

    app.fundwatch_core = core  # for tests and the demo's summary
    return app


#: Ledger key of an admission partition's outcome counts: "~" starts no record id's key.
COUNTS = "~counts/"

# Internal hops carry batches: up to BATCH_RECORDS records gathered for at most
# BATCH_WAIT_S, one message per destination partition.
BATCH_RECORDS = 2000
BATCH_WAIT_S = 0.1
BATCH_POSITIONS = 1000  # items per message at most: (offset, index) packed into one number
# The admission and detect stages take up to STAGE_MESSAGES messages waiting (for
# at most STAGE_WAIT_S) and handle each partition's as one batch: a rule-state slot
# is then read, decoded, encoded and written once per batch. Measured (cProfile of
# a worker, 62,099 records): decoding rule-state slots, once per message, was a
# third of the detect stage's time; some slots are tens of kilobytes of JSON (a
# province's month of management figures, a chain's pharmacies).
STAGE_MESSAGES = 64
STAGE_WAIT_S = 0.02
# Ledger entries an admission batch forgets at most (streams.admission.LedgerRetention):
# a province's day is millions of ids, forgotten over the next batches.
FORGET_PER_BATCH = 5000
IDLE_CHECK_S = 1.0  # how often the source partitions' progress is looked at between batches
IDLE_AFTER_S = 5.0  # a source partition unread since start and quiet this long is idle
CAUGHT_UP_S = 2.0  # a source partition read to its end is idle once it stays so this long
MAX_BATCH_BYTES = 256 * 1024
STALL_AFTER_S = 5.0  # no record from a partition with records to give: seek it back


def by_partition(events) -> list[tuple[int, list]]:
    """Faust events grouped by their message's partition, each group in the order
    received.

    >>> from types import SimpleNamespace as E
    >>> def event(partition, offset):
    ...     return E(message=E(partition=partition, offset=offset))
    >>> [(p, [e.message.offset for e in es]) for p, es in by_partition(
    ...     [event(1, 5), event(0, 9), event(1, 6)])]
    [(1, [5, 6]), (0, [9])]
    """
    groups: dict[int, list] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return list(groups.items())


@contextlib.contextmanager
def handling(event):
    """Make ``event`` Faust's current event: a table write finds its changelog
    partition (and a RocksDB table its database) from the event being handled,
    which Faust sets only while a stream yields one event at a time, not for a batch
    of ``take_events`` (the write fails: "Cannot modify table key from outside of
    stream iteration"). Give it an event of the partition the writes belong to.

    >>> from types import SimpleNamespace
    >>> from faust.streams import current_event
    >>> class Event(SimpleNamespace): pass  # (Faust holds it by weak reference)
    >>> event = Event(message=SimpleNamespace(partition=3))
    >>> with handling(event):
    ...     current_event().message.partition
    3
    >>> current_event() is None
    True
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield event
    finally:
        faust_streams._current_event.reset(token)


async def to_the_end(work):
    """Run one batch's ``work`` to its end even if the agent is cancelled meanwhile,
    then let the cancellation go on.

    Why: Faust acks a stream's events in a ``finally`` (Stream._py_aiter,
    take_events), so the events of an agent body cancelled mid-batch count as
    processed, and a stopping worker commits once more after cancelling its
    agents (App.on_stop: streams, agents, then Consumer.on_stop's commit). A batch
    cut short there — its records half sent on — would be committed as done.

    >>> async def batch(done):
    ...     await asyncio.sleep(0.01)
    ...     done.append(1)
    >>> async def stop_mid_batch():
    ...     done = []
    ...     agent = asyncio.ensure_future(to_the_end(batch(done)))
    ...     await asyncio.sleep(0)
    ...     agent.cancel()
    ...     try:
    ...         await agent
    ...     except asyncio.CancelledError:
    ...         return done
    >>> asyncio.run(stop_mid_batch())
    [1]
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await task
        raise


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, SHANGHAI).isoformat(timespec="seconds")


def stop_hard(stage: str, exc: Exception) -> None:
    """A failure that is not one record's fault (a send that failed, a bug): stop the
    process at once, before Faust could commit offsets of a batch not passed on, so
    the restarted worker re-reads it (at-least-once). Supervisors restart workers."""
    log.critical("%s stage failed (%s: %s); stopping the worker so that nothing is "
                 "committed unprocessed", stage, type(exc).__name__, exc, exc_info=exc)
    _exit_to_be_restarted()


def _exit_to_be_restarted() -> None:
    logging.shutdown()
    os._exit(70)


def stop_on_failed_send(topic: str, exc: BaseException) -> None:
    """A message the cluster did not take (refused, or not acknowledged in time, the
    producer's retries spent): stop the process at once (:func:`stop_for_the_cluster`).

    Why here, in the producer's callback, and not where the message was sent: most
    sends are not waited for (the internal hops, dead letters, Faust's own table
    writes), and Faust only logs a failed one, then flushes and commits the input
    that produced it — seen: a worker refused writes to its admission topic went on
    reading for a minute, committing records that never reached a rule. The
    producer calls back before a flush waiting on the same batch resumes (both are
    callbacks of it, the flush's wake-up queued behind), so the process ends before
    that flush's commit could be sent.
    """
    stop_for_the_cluster(f"did not take a message for {topic}", exc)


def stop_for_the_cluster(failure: str, exc: BaseException) -> None:
    """The cluster refused the worker something mid-run (``failure``: what): stop at
    once, exit code 70, as :func:`stop_hard` does. An authorization failure means an
    ACL the worker needs is missing — taken away while it ran, since the start-up
    check passed: its successor will stop the same way until it is granted, having
    lost nothing."""
    hint = ""
    if isinstance(exc, (kafka_errors.TopicAuthorizationFailedError,
                        kafka_errors.GroupAuthorizationFailedError)):
        hint = ": grant the worker its ACLs (`fundwatch acls` prints them)"
    elif isinstance(exc, kafka_errors.MessageSizeTooLargeError):
        hint = (": the topic's max.message.bytes is below what the worker writes; give "
                "the internal hops and the dead letters 4 MiB (infra/topics.py), and "
                "keep FUNDWATCH_STATE_PIECE_BYTES below the changelogs' limit")
    log.critical("the cluster %s (%s: %s)%s; stopping the worker so that nothing is "
                 "committed unprocessed", failure, type(exc).__name__, exc, hint)
    _exit_to_be_restarted()


class SendFailures(faust.Sensor):
    """Stops the worker on any message of Faust's producer that the cluster did not
    take (:func:`stop_on_failed_send`); the record batches of the table writes
    (streams.changelog) call it themselves."""

    def on_send_initiated(self, producer, topic: str, message, keysize: int,
                          valsize: int) -> str:
        return topic  # the state on_send_error is handed

    def on_send_error(self, producer, exc: BaseException, state: str) -> None:
        stop_on_failed_send(state, exc)


def stop_within(deadline_s: float):
    """A receiver for the app's ``on_before_shutdown`` (sent once its consumer has
    stopped) that ends the process if the stop has not ended ``deadline_s`` later.

    Why: Faust's stop then flushes the producer, and with the broker gone that
    waits for the producer's request timeout (Faust's default: 20 minutes; seen, a
    worker asked to stop still there 12 minutes later), holding up whatever
    supervises it. Ending the process loses nothing: offsets are committed only
    after the producer has flushed, so the next worker reads again what this one
    had not passed on, as after a SIGKILL.

    >>> arm = stop_within(60.0)
    >>> arm(None)   # the stop has begun: a daemon timer now runs out in 60 s
    >>> [t.name for t in threading.enumerate() if t.name == "fundwatch-stop-deadline"]
    ['fundwatch-stop-deadline']
    >>> arm.timer.cancel()
    """
    def arm(app, **kwargs) -> None:
        arm.timer = threading.Timer(deadline_s, stop_hard, args=(
            "stop", TimeoutError(f"the stop did not end within {deadline_s:g} s "
                                 "(is the broker unreachable?)")))
        arm.timer.name = "fundwatch-stop-deadline"
        arm.timer.daemon = True
        arm.timer.start()

    return arm


def load_registry(settings: Settings) -> Registry | None:
    return Registry.load(settings.pools_path) if settings.pools_path else None


def _alert_problems(raw: bytes) -> list[str]:
    try:
        return alert_problems(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        return [f"not JSON ({exc})"]


def internal_error(exc: Exception) -> Reason:
    return Reason("internal_error", f"fundwatch failed on this record "
                                    f"({type(exc).__name__}: {exc}); it is kept for replay")


def admission_key(event) -> str:
    """The partition key under which admission must see a record: every copy of an
    id, and a reversal with its original, must meet the same ledger partition."""
    if isinstance(event, Settlement):
        return "s:" + (event.reverses or event.settlement_id)
    return "c:" + event.contribution_id


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until stopped (SIGTERM / Ctrl-C stop it cleanly; one that has
    not ended ``settings.stop_deadline_s`` later ends its process: stop_within)."""
    from faust.worker import Worker

    app = build_app(settings)
    app.on_before_shutdown.connect(stop_within(settings.stop_deadline_s))
    worker = Worker(app, loglevel=loglevel, quiet=True)
    with heap.settled():  # the collector visited the whole start-up heap every second
        worker.execute_from_commandline()
