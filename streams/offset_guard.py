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

A record delivered must also reach its agent: the agents' queues are no longer
emptied when Faust resumes a flow that was running (:func:`patch_flow_resume`),
and a record delivered that is neither acknowledged nor anywhere in flight is
fetched again (``ContiguousDelivery.vanished``, run by the same timer).

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
    handing_over: tuple | None = None  # (partition, offset) the consumer is handing over
    # partition → the offset after the last record its agent acknowledged (or the
    # offset sought to): delivered records from here on are in flight or lost
    acknowledged: dict = field(default_factory=dict)
    acked_ahead: dict = field(default_factory=dict)  # partition → offsets acked past it
    holes: dict = field(default_factory=dict)  # partition → {first: end} of holes accepted
    # partition → (acknowledged, since, fetch round) while the record there,
    # delivered, is neither acknowledged nor in flight
    unaccounted: dict = field(default_factory=dict)

    def sought(self, tp, offset: int | None, now: float = 0.0) -> None:
        """The partition was sought to ``offset`` (None: no committed offset yet —
        the first record delivered sets the expectation)."""
        self.moved_at[tp] = (now, self.rounds)
        self.fetchless_since.pop(tp, None)
        self._forget_acks(tp)
        if offset is None or offset < 0:
            self.expected.pop(tp, None)
            self.acknowledged.pop(tp, None)
        else:
            self.expected[tp] = offset
            self.acknowledged[tp] = offset

    def forget(self, tp) -> None:
        """The partition was revoked."""
        self.expected.pop(tp, None)
        self.moved_at.pop(tp, None)
        self.fetchless_since.pop(tp, None)
        self.acknowledged.pop(tp, None)
        self._forget_acks(tp)

    def _forget_acks(self, tp) -> None:
        """What was counted of the acknowledgements past the partition's position:
        a seek or a revocation starts the count again."""
        self.acked_ahead.pop(tp, None)
        self.holes.pop(tp, None)
        self.unaccounted.pop(tp, None)

    def acked(self, tp, offset: int) -> None:
        """An agent acknowledged the record at ``offset``: processed. Counted in
        order: one acknowledged past a record that was not waits in ``acked_ahead``
        until that one is (or is found lost, see :meth:`vanished`); a hole the
        log really has counts as acknowledged.

        >>> guard = ContiguousDelivery()
        >>> guard.sought("admit/0", 5)
        >>> guard.check("admit/0", 5), guard.acked("admit/0", 5)
        (('deliver', None), None)
        >>> [guard.check("admit/0", 9) for _ in range(RESEEKS + 1)][-1]   # 6–8: no such
        ('deliver', None)
        >>> guard.acked("admit/0", 9); guard.acknowledged["admit/0"]
        10
        """
        done = self.acknowledged.get(tp)
        if done is None or offset < done:
            return
        if offset > done:
            self.acked_ahead.setdefault(tp, set()).add(offset)
            return
        self._settle(tp, done + 1)

    def _settle(self, tp, done: int) -> None:
        """Acknowledged to ``done``, and on past the offsets acknowledged ahead and
        the holes accepted that follow it."""
        ahead, holes = self.acked_ahead.get(tp, ()), self.holes.get(tp, {})
        while done in ahead or done in holes:
            if done in holes:
                done = holes.pop(done)
            else:
                ahead.remove(done)
                done += 1
        self.acknowledged[tp] = done

    def vanished(self, tp, first_in_flight: int | None, now: float,
                 after_s: float) -> int | None:
        """The offset to seek ``tp`` back to if the first record delivered and not
        acknowledged is not in flight either (handed over, in an agent's queue, or
        taken up by a stream: ``first_in_flight`` is the lowest such offset), and
        that has held for ``after_s`` and MIN_ROUNDS fetch rounds. It was lost
        between the consumer and its agent, and no fetch brings it again before
        a rebalance (it is not committed: the next owner reads it). Faust has had
        two such paths here (a read offset left too high; the agents' queues
        cleared at a resume, see :func:`patch_flow_resume`); this catches the next.

        >>> guard = ContiguousDelivery()
        >>> guard.sought("settlements/0", 8, now=100.0)
        >>> [guard.check("settlements/0", n) for n in range(8, 13)][-1]
        ('deliver', None)
        >>> guard.acked("settlements/0", 8); guard.acked("settlements/0", 11)
        >>> guard.vanished("settlements/0", 9, now=101.0, after_s=5.0)   # in flight
        >>> guard.vanished("settlements/0", 12, now=102.0, after_s=5.0)  # 9, 10 lost?
        >>> guard.rounds += MIN_ROUNDS
        >>> guard.vanished("settlements/0", 12, now=106.0, after_s=5.0)  # not yet
        >>> guard.vanished("settlements/0", 12, now=107.0, after_s=5.0)
        9
        >>> guard.acked("settlements/0", 9); guard.acked("settlements/0", 10)
        >>> guard.acknowledged["settlements/0"]                          # 11 counted too
        12
        >>> guard.vanished("settlements/0", 12, now=120.0, after_s=5.0)
        """
        want, done = self.expected.get(tp), self.acknowledged.get(tp)
        if (want is None or done is None or done >= want
                or first_in_flight is not None and first_in_flight <= done):
            self.unaccounted.pop(tp, None)
            return None
        seen = self.unaccounted.get(tp)
        if seen is None or seen[0] != done:
            self.unaccounted[tp] = (done, now, self.rounds)
            return None
        _, since, at_round = seen
        if now - since < after_s or self.rounds - at_round < MIN_ROUNDS:
            return None
        del self.unaccounted[tp]
        return done

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
            # Nothing there to acknowledge: counted done when the records before are.
            self.holes.setdefault(tp, {})[want] = offset
            if tp in self.acknowledged:
                self._settle(tp, self.acknowledged[tp])
        elif want is not None and offset == want:
            self.reseeks.pop((tp, want), None)
        elif want is None:
            self.acknowledged.setdefault(tp, offset)
        self.expected[tp] = offset + 1
        return DELIVER, None


_PATCHED: dict = {"done": False, "topics": set()}


def patch_flow_resume() -> None:
    """Resume the flow into the agents' queues clearing them only if it was
    suspended (idempotent).

    mode's FlowControlEvent.resume always clears them, and at the end of a recovery
    Faust resumes a flow already running since the recovery began, after resuming
    the stream partitions and seeking them to their committed offsets. Records
    delivered to the queues in between were dropped there: not skipped, not
    acknowledged, never fetched again by this worker, committed by no one. Seen in
    tests/test_ledger_retention.py's restart (records 8–10 of a partition
    delivered after the seek, then gone: the guard had seen them delivered, so the
    stall check saw nothing) and test_joint_review.py's, about one run in five
    under load. A suspended flow is cleared as before: what the queues hold then
    was fetched before a rebalance, and the seek to the committed offsets that
    follows delivers it again.

    >>> from mode.utils.queues import FlowControlEvent, FlowControlQueue
    >>> patch_flow_resume()
    >>> flow = FlowControlEvent()                  # suspended, as Faust starts it
    >>> queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    >>> flow.resume(); queue.put_nowait("settlements[0]@8")
    >>> flow.resume(); queue.qsize()               # running: kept
    1
    >>> flow.suspend(); flow.resume(); queue.qsize()   # after a rebalance: cleared
    0
    """
    from mode.utils.queues import FlowControlEvent

    if getattr(FlowControlEvent, "_fundwatch_resume", False):
        return
    original_resume = FlowControlEvent.resume

    def resume(self) -> None:
        if self.is_active():
            self._resume.set()
            return
        original_resume(self)

    FlowControlEvent.resume = resume
    FlowControlEvent._fundwatch_resume = True


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
        guard.handing_over = None
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
            guard.handing_over = (tp, message.offset)  # until the drain loop asks again
            yield tp, message
            guard.handing_over = None

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
        holds (see ContiguousDelivery.stalled), or delivered a record that then
        vanished before its agent acknowledged it (ContiguousDelivery.vanished)."""
        guard = guard_of(self)
        now = time.monotonic()
        stopped = guard.rounds_stopped_for(now, UNANSWERED_AFTER_S)
        if stopped is not None and self.flow_active:
            log.warning("the consumer has begun no fetch round for %.0f s; its tasks:\n%s",
                        stopped, _task_stacks())
        active = self._get_active_partitions()
        in_flight = self.fundwatch_in_flight()
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
            lost_from = guard.vanished(tp, in_flight.get(tp), now, after_s)
            if lost_from is not None:
                log.warning("partition %s[%d]: record %d was delivered and is neither "
                            "acknowledged nor in flight (lost between the consumer and "
                            "its agent); seeking back to it, the records after it are "
                            "delivered again", tp.topic, tp.partition, lost_from)
                await self.seek_wait({tp: lost_from})
                guard.sought(tp, lost_from, time.monotonic())
                continue
            want = guard.stalled(tp, highwater, now, after_s)
            if want is None:
                continue
            log.warning("partition %s[%d]: nothing delivered for %.0f s and %d fetch "
                        "rounds from offset %d though the broker holds records to %d; "
                        "seeking back to %d", tp.topic, tp.partition, after_s, MIN_ROUNDS,
                        want, highwater, want)
            await self.seek_wait({tp: want})

    def in_flight(self) -> dict:
        """Partition → the lowest offset somewhere between the consumer and its
        agent's acknowledgement: being handed over, in an agent's queue, or taken
        up by a stream and not acknowledged yet."""
        first: dict = {}

        def note(tp, offset):
            if offset < first.get(tp, offset + 1):
                first[tp] = offset
        for message in list(self._unacked_messages):
            if not message.acked:
                note(message.tp, message.offset)
        handing_over = guard_of(self).handing_over
        if handing_over is not None:
            note(*handing_over)
        channels = {id(c): c for cs in list(self.app.topics._tp_index.values()) for c in cs}
        for channel in channels.values():
            for event in list(channel.queue._queue):
                message = getattr(event, "message", None)
                if message is not None:
                    note(message.tp, message.offset)
        return first

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
        if message.topic not in _PATCHED["topics"]:
            return original_ack(self, message)
        app = self.app
        if not (app.flow_control.is_active()
                and getattr(message, "generation_id", None) == app.consumer_generation_id):
            if not message.acked:
                message.acked = True  # nothing waits for it (Consumer.wait_empty)
                self._unacked_messages.discard(message)
                # Not processed: due again here too, in case no seek to the
                # committed offset follows (the partition kept, the flow resumed).
                guard_of(self).skipped(message.tp, message.offset)
            return False
        guard_of(self).acked(message.tp, message.offset)
        return original_ack(self, message)

    original_new_offset = Consumer._new_offset

    def new_offset(self, tp) -> int | None:
        """The offset to commit: the guard's count of records acknowledged in
        order, never past one that was not. Faust's own (``_new_offset``) passes an
        unacknowledged record at the head of a partition whenever the partition
        has no committed offset (or 0), and one such record anywhere (it checks
        ``min(acked) - committed > 1``): a record lost on its way to the agent was
        committed past, and lost for good if the worker stopped before the stall
        check fetched it again (tests/test_scale_out.py). Faust's acknowledged
        offsets below the count are dropped as its own commit would."""
        done = guard_of(self).acknowledged.get(tp)
        if tp.topic not in _PATCHED["topics"] or done is None:
            return original_new_offset(self, tp)
        acked = self._acked[tp]
        below = [offset for offset in acked if offset < done]
        if below:
            acked[:] = [offset for offset in acked if offset >= done]
            self._acked_index[tp].difference_update(below)
        gap = self._gap.get(tp)
        if gap:
            gap.chop(0, done)
        return done

    patch_flow_resume()
    Consumer._new_offset = new_offset
    Consumer.ack = ack
    Consumer.fundwatch_unstick = unstick
    Consumer.fundwatch_in_flight = in_flight
    Consumer.getmany = getmany
    driver.Consumer.seek_to_committed = seek_to_committed
    Consumer.seek = seek
    Consumer.on_partitions_revoked = on_partitions_revoked
    _PATCHED["done"] = True
