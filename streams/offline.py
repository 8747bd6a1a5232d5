"""The offline driver: the live pipeline's stages, in order, over memory.

Auditors' replays and tests run the exact functions the Faust agents run —
``records.parse``, ``admission.admit``, ``DetectionCore.routes``/``process``/``close``
and the watermark of ``streams.watermark`` — with dicts where the live worker has
Faust tables. The input is one channel: its watermark is the newest event time
seen minus the allowed lateness.

"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

import orjson

from rules.core import ClosingIndex, DetectionCore
from streams.admission import LedgerRetention, admit, event_day_of_ms
from streams.deadletter import deadletter_record
from streams.records import Reason, Rejected, from_canonical, parse, to_canonical
from streams.watermark import DEFAULT_LATENESS_S, event_ms, is_late, last_midnight, to_ms


@dataclass
class OfflinePipeline:
    core: DetectionCore
    ledger: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    alerts: dict[str, dict] = field(default_factory=dict)  # alert_id → latest revision
    emitted: list[dict] = field(default_factory=list)  # every revision, in order
    deadletters: list[dict] = field(default_factory=list)
    # What the models scored, in the order they scored it ({"settlement_id", "scores"})
    scores: list[dict] = field(default_factory=list)
    lateness_s: int = DEFAULT_LATENESS_S
    # Days behind the watermark the ledger remembers ids (admission.LedgerRetention);
    # None or 0: for ever.
    retention_days: int | None = None
    newest_ms: int | None = None  # the newest event time seen (the one channel's mark)
    closed_ms: int | None = None  # the last midnight the closing rules were called for
    _position: int = 0  # the offline stream's own offsets, as a partition's are live
    # Called as on_close(state, midnight) after each close is committed: what only a
    # replay wants to see between closes (the days' balances a report draws).
    on_close: Callable[[dict, datetime], None] | None = None

    def __post_init__(self) -> None:
        # The slots the closes visit, as live (rules.core.ClosingIndex). ``state``
        # may be swapped for another view of the same slots (an overlay) between
        # records, never written behind the pipeline's back.
        self.closing = ClosingIndex(self.core)
        self.retention = (LedgerRetention(self.retention_days, "offline")
                          if self.retention_days else None)
        self._advanced_day: int | None = None  # the watermark's day at the last advance

    def feed(self, raw: bytes, *, source: str | None = None, topic: str | None = None,
             partition: int | None = None, offset: int | None = None,
             parsed: Any = None) -> str:
        """Run one input record through every stage; return its outcome. ``parsed``:
        the record already parsed by the caller (a replay filtering by period)."""
        try:
            event = parsed if parsed is not None else parse(raw)
        except Rejected as exc:
            return self._reject(raw, exc.reasons, "validate", topic, partition, offset)
        try:
            return self._admit_and_detect(event, raw, source, topic, partition, offset)
        finally:
            # As live, where the channel's mark moves with every valid record.
            t = event_ms(event)
            self.newest_ms = t if self.newest_ms is None else max(self.newest_ms, t)
            self._advance()

    def _admit_and_detect(self, event, raw, source, topic, partition, offset) -> str:
        self._position += 1
        # Between stages the live path ships the canonical form; do the same so the
        # detection core sees identical objects in both drivers.
        canonical = to_canonical(event)
        verdict = admit(event, self.ledger, source, position=("offline", self._position),
                        canonical=canonical, retention=self.retention)
        if verdict.redelivery and verdict.outcome != "accepted":
            self.counts["redelivered"] += 1
            return verdict.outcome
        if verdict.outcome == "rejected":
            return self._reject(raw, verdict.reasons, "admit", topic, partition, offset)
        if verdict.outcome == "duplicate":
            self.counts["duplicate"] += 1
            return "duplicate"
        self.counts["redelivered" if verdict.redelivery else "accepted"] += 1
        event = from_canonical(canonical)
        late = is_late(event, self.closed_ms)  # no close runs between its copies
        for kind, key in self.core.routes(event):
            if late:
                self.counts["late"] += 1  # copies, as the live detect stage counts them
            detection = self.core.process(kind, key, event, self.state,
                                          position=verdict.position)
            self.core.commit(self.state, detection)
            self.closing.update(detection.updates)
            for alert in detection.alerts:
                self.emitted.append(alert)
                self.alerts[alert["alert_id"]] = alert
            if detection.failures:
                # As live: the detect stage holds the canonical form, not the raw bytes.
                self._rule_failures(orjson.dumps(canonical), detection.failures, topic,
                                    partition, offset)
        return "accepted"

    def _advance(self) -> None:
        """Close the days the watermark has passed (see ``streams.watermark``)."""
        if self.newest_ms is None:
            return
        watermark = self.newest_ms - self.lateness_s * 1000
        day = event_day_of_ms(watermark)
        # Closes and the ledger's forgetting both move by whole days (Asia/Shanghai,
        # no DST): within the day of the last advance there is nothing to do, and
        # finding that out per record cost more than the rest of this method.
        if day == self._advanced_day:
            return
        self._close_at(last_midnight(watermark))
        # Live, admission forgets with every batch's progress; once a day is enough.
        if self.retention is not None:
            self.retention.expire(self.ledger, watermark)
        self._advanced_day = day

    def close_input(self) -> None:
        """The input is complete (a historical stream, replayed whole): every day up to
        and including the newest record's day is closed. A live worker never does
        this: more records may always come."""
        if self.newest_ms is not None:
            self._close_at(last_midnight(self.newest_ms) + timedelta(days=1))

    def _close_at(self, midnight: datetime) -> None:
        if not self.core.has_timers:
            return
        if self.closed_ms is not None and to_ms(midnight) <= self.closed_ms:
            return
        self.closed_ms = to_ms(midnight)
        detection = self.core.close(self.closing.slots_due(self.state), self.state,
                                    midnight)
        self.core.commit(self.state, detection)
        self.closing.update(detection.updates)
        self.scores.extend(detection.scores)
        for alert in detection.alerts:
            self.emitted.append(alert)
            self.alerts[alert["alert_id"]] = alert
        if detection.failures:
            self._rule_failures(timer_record(midnight), detection.failures, None, None, None)
        if self.on_close is not None:
            self.on_close(self.state, midnight)

    def feed_all(self, lines: Iterable[bytes]) -> "OfflinePipeline":
        for number, line in enumerate(lines, 1):
            if line.strip():
                self.feed(line, source=f"line/{number}", offset=number)
        return self

    def _rule_failures(self, raw, failures, topic, partition, offset) -> None:
        """The record was accepted; a rule failed on it. Record it for repair and replay
        (the live worker sends the same to the dead-letter topic)."""
        reasons = [Reason("rule_failed", message) for _, message in failures]
        self.counts["rule_failed"] += len(failures)
        self.deadletters.append(deadletter_record(raw, reasons, stage="detect", topic=topic,
                                                  partition=partition, offset=offset,
                                                  key=None))

    def _reject(self, raw, reasons, stage, topic, partition, offset) -> str:
        self.counts["rejected"] += 1
        self.reasons.update(r.code for r in reasons)
        self.deadletters.append(deadletter_record(raw, reasons, stage=stage, topic=topic,
                                                  partition=partition, offset=offset,
                                                  key=None))
        return "rejected"


def timer_record(midnight) -> bytes:
    """What a dead letter holds when a rule fails in its ``close`` timer: there is no
    input record, only the moment, which is enough to replay it."""
    return orjson.dumps({"timer": "close", "midnight": midnight.isoformat()})
