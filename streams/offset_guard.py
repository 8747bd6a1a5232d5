"""Every record of a partition reaches its agent, in order: no silent gap.

Faust 0.15.3 takes a jump in a partition's offsets for a gap in the log (records
removed by compaction, transaction markers) and counts the offsets in between as
acknowledged, so the next commit passes them. A jump can also come from the
consumer itself. Seen in the hand-over test (tests/test_scale_out.py): the worker
taking partitions over sought them to their committed offsets, and the first
record delivered was still the partition's end, not the committed offset:

    after the seek: admission partition 1 at 32 (the previous owner's commit)
    first record delivered: 46 — offsets 32–45 counted as done, never admitted

That lost 36 to 578 of 5,894 records in a loop of that scenario. Where the consumer's
position came from is not known (aiokafka's position reset racing the seek is the
suspect). So the worker no longer relies on it: :func:`patch` makes Faust's
consumer check every record of the topics named against the offset it expects
next — the committed offset after a seek, else the one after the last record
delivered — and a record that jumps past it is held back and the partition sought
back to the expected offset, from where the broker delivers the records in
between. A partition whose consumer stands past records with nothing after them
to show the jump (a partition's last records: seen as a source partition that
delivered nothing more after a takeover) is caught by ``unstick``, run by a timer.

A hole the broker really has (records deleted by retention or compaction; a
transaction marker) comes back at the same place after the seek: after
:data:`RESEEKS` seeks landing there, it is accepted and logged.

The third guard is on acknowledgements: Faust acks the events it skips while the
flow is stopped or for an earlier generation, and its next commit passed them
(see ``ack`` in :func:`patch`); a skipped record is due again.

And a consumer's silences are said, not left to look like a quiet stream: a
partition with no fetch answer (the worker exits after FETCHLESS_EXIT_S, having
read nothing, to be restarted), a fetch loop that stopped, a partition held paused
with records waiting.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("fundwatch.worker")

RESEEKS = 3  # seeks back to the same offset before a hole is taken to be the broker's
MIN_ROUNDS = 3  # fetch rounds without a record before a partition counts as stalled
UNANSWERED_AFTER_S = 30.0  # an active partition without a fetch answer this long is logged
FETCHLESS_EXIT_S = 60.0  # ... and this long, the worker exits to be restarted (aiokafka
# waits 40 s for any answer before it gives a request up)

DELIVER, SEEK_BACK = "deliver", "seek back"


class ConsumerStuck(RuntimeError):
    """An assigned, unpaused partition has had no fetch answer for FETCHLESS_EXIT_S."""


@dataclass
class ContiguousDelivery:
    """The offset each partition is expected to deliver next, and what to do with a
    record that does not match it.

    >>> guard = ContiguousDelivery()
    >>> guard.sought("admit/1", 32)       # a seek to the committed offset
    >>> guard.check("admit/1", 46)        # the consumer jumped past 32–45
    ('seek back', 32)
    >>> guard.check("admit/1", 32), guard.check("admit/1", 33)
    (('deliver', None), ('deliver', None))
    >>> guard.check("admit/1", 31)        # a redelivery (at-least-once): harmless
    ('deliver', None)
    >>> guard.check("admit/1", 32)
    ('deliver', None)
    """

    expected: dict = field(default_factory=dict)
    reseeks: dict = field(default_factory=dict)  # (partition, offset) → seeks back there
    # partition → (time, fetch round) it last delivered or was sought at
    moved_at: dict = field(default_factory=dict)
    rounds: int = 0  # fetch rounds begun: the consumer asked the broker for more
    fetchless_since: dict = field(default_factory=dict)  # partition → since when unanswered
    last_round: tuple = (0, 0.0)  # (rounds, time) when the count of rounds last moved

    def sought(self, tp, offset: int | None, now: float = 0.0) -> None:
        """The partition was sought to ``offset`` (None: no committed offset yet —
        the first record delivered sets the expectation)."""
        self.moved_at[tp] = (now, self.rounds)
        self.fetchless_since.pop(tp, None)
        if offset is None or offset < 0:
            self.expected.pop(tp, None)
        else:
            self.expected[tp] = offset

    def forget(self, tp) -> None:
        """The partition was revoked."""
        self.expected.pop(tp, None)
        self.moved_at.pop(tp, None)
        self.fetchless_since.pop(tp, None)

    def stalled(self, tp, highwater: int | None, now: float, after_s: float) -> int | None:
        """The offset to seek ``tp`` back to if the broker holds records from the one
        expected on and none has been delivered for ``after_s`` and MIN_ROUNDS fetch
        rounds: the consumer stands past them with nothing after to show the jump
        (a partition's last records). Counting rounds keeps a worker too busy to
        fetch (its event loop held by a long close) from being taken for a stall.

        >>> guard = ContiguousDelivery()
        >>> guard.sought("settlements/3", 1386, now=100.0)
        >>> guard.rounds += MIN_ROUNDS
        >>> guard.stalled("settlements/3", 1424, now=102.0, after_s=5.0)   # not yet
        >>> guard.stalled("settlements/3", 1424, now=106.0, after_s=5.0)
        1386
        >>> guard.stalled("settlements/3", 1386, now=112.0, after_s=5.0)   # read to the end
        >>> guard.sought("admit/0", 20, now=100.0)
        >>> guard.stalled("admit/0", 30, now=110.0, after_s=5.0)   # no fetch since: busy
        """
        want = self.expected.get(tp)
        if want is None or highwater is None or highwater <= want:
            return None
        return None if self.quiet_for(tp, now, after_s) is None else want

    def quiet_for(self, tp, now: float, after_s: float) -> float | None:
        """Seconds since ``tp`` was sought or last delivered, if that is ``after_s`` or
        more and MIN_ROUNDS fetch rounds have begun since; once per such period
        (what the caller does about it — a seek — is not repeated at every check).
        Also for a partition without a high-water mark: no fetch answer has come for
        it at all (an empty partition's answer carries one).

        >>> guard = ContiguousDelivery()
        >>> guard.sought("alerts/0", 2, now=100.0)
        >>> guard.rounds += MIN_ROUNDS
        >>> guard.quiet_for("alerts/0", now=110.0, after_s=30.0)    # not yet
        >>> guard.quiet_for("alerts/0", now=131.0, after_s=30.0)
        31.0
        >>> guard.quiet_for("alerts/0", now=132.0, after_s=30.0)    # once a period
        """
        since, at_round = self.moved_at.get(tp, (now, self.rounds))
        if now - since < after_s or self.rounds - at_round < MIN_ROUNDS:
            return None
        self.moved_at[tp] = (now, self.rounds)
        return now - since

    def fetchless_for(self, tp, highwater: int | None, now: float) -> float:
        """How long ``tp`` has gone without a single fetch answer since it was sought
        (or first looked at), 0 once it has one (an empty partition's answer carries
        a high-water mark too). Only asked of partitions assigned and not paused.

        >>> guard = ContiguousDelivery()
        >>> guard.sought("alerts/0", 0, now=100.0)
        >>> guard.fetchless_for("alerts/0", None, now=100.0)
        0.0
        >>> guard.fetchless_for("alerts/0", None, now=160.0)
        60.0
        >>> guard.fetchless_for("alerts/0", 4, now=161.0)
        0.0
        """
        if highwater is not None:
            self.fetchless_since.pop(tp, None)
            return 0.0
        return now - self.fetchless_since.setdefault(tp, now)

    def rounds_stopped_for(self, now: float, after_s: float) -> float | None:
        """Seconds since the consumer last began a fetch round, if ``after_s`` or
        more; once per such period. A consumer whose fetch loop stopped delivers
        nothing, and the stall check (which counts rounds, so as not to take a busy
        worker for a stalled one) would not say so.

        >>> guard = ContiguousDelivery()
        >>> guard.rounds_stopped_for(now=100.0, after_s=30.0)       # first look
        >>> guard.rounds_stopped_for(now=131.0, after_s=30.0)
        31.0
        >>> guard.rounds_stopped_for(now=140.0, after_s=30.0)       # once a period
        >>> guard.rounds += 1
        >>> guard.rounds_stopped_for(now=175.0, after_s=30.0)       # it moved again
        """
        rounds, since = self.last_round
        if rounds != self.rounds or since == 0.0:
            self.last_round = (self.rounds, now)
            return None
        if now - since < after_s:
            return None
        self.last_round = (self.rounds, now)
        return now - since

    def skipped(self, tp, offset: int) -> None:
        """Faust dropped the record at ``offset`` after it was delivered (the flow
        was stopped, or it was fetched in an earlier generation); it is due again,
        and the next record delivered, or the stall check, sends the partition back
        to it. A seek to the committed offset (after a rebalance) overrides this.

        >>> guard = ContiguousDelivery()
        >>> guard.sought("settlements/0", 8)
        >>> [guard.check("settlements/0", n) for n in (8, 9)]
        [('deliver', None), ('deliver', None)]
        >>> guard.skipped("settlements/0", 9); guard.skipped("settlements/0", 8)
        >>> guard.check("settlements/0", 10)
        ('seek back', 8)
        """
        want = self.expected.get(tp)
        if want is None or offset < want:
            self.expected[tp] = offset

    def check(self, tp, offset: int, now: float = 0.0) -> tuple[str, int | None]:
        self.moved_at[tp] = (now, self.rounds)
        want = self.expected.get(tp)
        if want is not None and offset > want:
            key = (tp, want)
            self.reseeks[key] = self.reseeks.get(key, 0) + 1
            if self.reseeks[key] <= RESEEKS:
                return SEEK_BACK, want
            log.error("partition %s: offsets %d–%d are not in the log (sought back %d "
                      "times; deleted by retention or compaction?): going on from %d",
                      tp, want, offset - 1, RESEEKS, offset)
            del self.reseeks[key]
        elif want is not None and offset == want:
            self.reseeks.pop((tp, want), None)
        self.expected[tp] = offset + 1
        return DELIVER, None


_PATCHED: dict = {"done": False, "topics": set()}


def _task_stacks(frames: int = 6) -> str:
    """The innermost ``frames`` frames of every task on the running loop: where a
    stalled fetch loop waits."""
    import asyncio
    import io

    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=frames, file=out)
    return out.getvalue()


def patch(topics: set[str]) -> None:
    """Guard the partitions of ``topics`` in Faust's consumer (idempotent; the
    topics of the last call are the ones guarded)."""
    _PATCHED["topics"] = set(topics)
    if _PATCHED["done"]:
        return
    from faust.transport.consumer import Consumer

    from faust.transport.drivers import aiokafka as driver

    original_getmany = Consumer.getmany
    original_seek_to_committed = driver.Consumer.seek_to_committed
    original_seek = Consumer.seek
    original_revoked = Consumer.on_partitions_revoked

    def guard_of(consumer) -> ContiguousDelivery:
        guard = consumer.__dict__.get("_fundwatch_guard")
        if guard is None:
            guard = consumer.__dict__["_fundwatch_guard"] = ContiguousDelivery()
        return guard

    async def getmany(self, timeout: float):
        guard = guard_of(self)
        guarded = _PATCHED["topics"]
        held: set = set()  # partitions sought back: the rest of this fetch is stale
        guard.rounds += 1
        async for tp, message in original_getmany(self, timeout):
            if tp.topic not in guarded:
                yield tp, message
                continue
            if tp in held:
                continue
            due = guard.expected.get(tp)
            action, offset = guard.check(tp, message.offset, time.monotonic())
            if action == SEEK_BACK:
                log.warning("partition %s[%d]: record %d delivered where %d was due; "
                            "seeking back to %d", tp.topic, tp.partition, message.offset,
                            offset, offset)
                held.add(tp)
                # seek_wait runs in the consumer's own thread (Faust's plain seek
                # touches aiokafka from this one) and sets Faust's read offset.
                await self.seek_wait({tp: offset})
                continue
            read = self._read_offset.get(tp)
            if message.offset == due and read is not None and read > due:
                # Faust's fetch loop drops, unlogged, a record below the offset it
                # last read. That offset can be left above the committed one when
                # records fetched before the seek to it finish passing through
                # after it (a worker restarted as records arrived: 0 of 4 new
                # records read in tests/test_ledger_retention.py). The record is
                # the one due: deliver it.
                log.warning("partition %s[%d]: record %d is due but Faust had read to "
                            "%d and would drop it; delivering it", tp.topic,
                            tp.partition, due, read)
                self._read_offset[tp] = due
            yield tp, message

    async def seek_to_committed(self):
        committed = await original_seek_to_committed(self)
        guard = guard_of(self)
        guard.last_round = (guard.rounds, time.monotonic())  # a rebalance ends here
        mine = {tp: offset for tp, offset in committed.items()
                if tp.topic in _PATCHED["topics"]}
        # A partition the group never committed is read from its beginning
        # (auto_offset_reset "earliest"): expect that offset, as the broker gives it
        # now, or a consumer standing past its first records would go unseen.
        never = [tp for tp, offset in mine.items() if offset is None or offset < 0]
        if never:
            try:
                mine.update(await self.earliest_offsets(*never))
            except Exception as exc:  # noqa: BLE001 - unguarded until its first record, as before
                log.warning("the beginning of %s not known (%s: %s): their first records "
                            "are not checked", never, type(exc).__name__, exc)
        resumed = []
        for tp, offset in sorted(mine.items()):
            guard.sought(tp, offset, time.monotonic())
            resumed.append(f"{tp.topic}[{tp.partition}]@{offset}"
                           + (" (never committed: from the beginning)" if tp in never else ""))
        if resumed:
            # Where this worker takes each partition up: what an auditor asks first
            # when a record seems missed or read twice across a hand-over.
            log.info("resuming from the committed offsets: %s", ", ".join(resumed))
        return committed

    async def seek(self, partition, offset: int) -> None:
        await original_seek(self, partition, offset)
        guard_of(self).sought(partition, offset, time.monotonic())

    async def on_partitions_revoked(self, revoked) -> None:
        guard = guard_of(self)
        for tp in revoked:
            guard.forget(tp)
        await original_revoked(self, revoked)

    async def unstick(self, after_s: float) -> None:
        """Seek back every guarded partition that stalled past records the broker
        holds (see ContiguousDelivery.stalled)."""
        guard = guard_of(self)
        now = time.monotonic()
        stopped = guard.rounds_stopped_for(now, UNANSWERED_AFTER_S)
        if stopped is not None and self.flow_active:
            log.warning("the consumer has begun no fetch round for %.0f s; its tasks:\n%s",
                        stopped, _task_stacks())
        active = self._get_active_partitions()
        for tp in list(self.assignment()):
            if tp.topic not in _PATCHED["topics"]:
                continue
            try:
                highwater = self.highwater(tp)
            except Exception:  # noqa: BLE001 - no fetch answer yet
                highwater = None
            if tp not in active or tp in self._buffered_partitions:
                guard.fetchless_since.pop(tp, None)  # not asked for: not unanswered
                want = guard.expected.get(tp)
                if (highwater is not None and want is not None and highwater > want
                        and guard.quiet_for(tp, now, UNANSWERED_AFTER_S) is not None):
                    log.warning("partition %s[%d]: paused for %.0f s or more with records "
                                "%d–%d waiting (%s)", tp.topic, tp.partition,
                                UNANSWERED_AFTER_S, want, highwater - 1,
                                "its agent's buffer is full" if tp in
                                self._buffered_partitions else "paused by Faust")
                continue  # paused, or held back while its agent's buffer is full
            # A worker "ready" that reads nothing must say so, and not for ever: seen
            # once in CI (82 s of silence), and made to happen in
            # tests/test_scale_out.py — aiokafka's fetcher waiting on an answer about
            # one partition that never comes fetches from no partition of that
            # broker. Nothing has been read, so nothing is lost by exiting; a
            # restarted worker asks afresh.
            fetchless = guard.fetchless_for(tp, highwater, now)
            if fetchless >= FETCHLESS_EXIT_S:
                raise ConsumerStuck(f"partition {tp.topic}[{tp.partition}]: no fetch "
                                    f"answer in {fetchless:.0f} s though it is assigned "
                                    f"and not paused")
            if highwater is None:
                quiet = guard.quiet_for(tp, now, UNANSWERED_AFTER_S)
                if quiet is not None:
                    log.warning("partition %s[%d]: no fetch answer for %.0f s and %d "
                                "fetch rounds though it is assigned and not paused "
                                "(the worker exits at %.0f s)", tp.topic, tp.partition,
                                quiet, MIN_ROUNDS, FETCHLESS_EXIT_S)
                continue
            want = guard.stalled(tp, highwater, now, after_s)
            if want is None:
                continue
            log.warning("partition %s[%d]: nothing delivered for %.0f s and %d fetch "
                        "rounds from offset %d though the broker holds records to %d; "
                        "seeking back to %d", tp.topic, tp.partition, after_s, MIN_ROUNDS,
                        want, highwater, want)
            await self.seek_wait({tp: want})

    original_ack = Consumer.ack

    def ack(self, message) -> bool:
        """Refuse the acknowledgement of a message while the flow is stopped (a
        rebalance or a stop under way) or fetched in an earlier generation: Faust
        acks the events it *skips* for those reasons (Stream._py_aiter's ``finally``:
        ``do_ack or value is skipped_value``), and the commit that follows passed
        records no agent had seen — an alert on the topic but never in the store, at
        a worker's stop. Refused, the message is read again from the committed
        offset by whoever owns the partition next (what was processed in that window
        comes back as a redelivery, which every stage handles)."""
        app = self.app
        if message.topic in _PATCHED["topics"] and not (
                app.flow_control.is_active()
                and getattr(message, "generation_id", None) == app.consumer_generation_id):
            if not message.acked:
                message.acked = True  # nothing waits for it (Consumer.wait_empty)
                self._unacked_messages.discard(message)
                # Not processed: due again here too, in case no seek to the
                # committed offset follows (the partition kept, the flow resumed).
                guard_of(self).skipped(message.tp, message.offset)
            return False
        return original_ack(self, message)

    Consumer.ack = ack
    Consumer.fundwatch_unstick = unstick
    Consumer.getmany = getmany
    driver.Consumer.seek_to_committed = seek_to_committed
    Consumer.seek = seek
    Consumer.on_partitions_revoked = on_partitions_revoked
    _PATCHED["done"] = True
