"""Faust's consumer loop, without four asyncio tasks per record.

Faust (faust-streaming 0.15.3, ``Consumer._drain_messages``) hands every fetched
record to the streams through ``Service.wait_first(callback(message),
suspend_flow.wait())``: so that a delivery that has to wait (flow stopped for a
rebalance, the producer's buffer over its limit, a stream's buffer full) can be
abandoned when the flow is suspended or the worker stops. ``wait_first`` does that by
creating four tasks per record (the delivery, the suspend flag, the stopped and the
crashed flags), waiting for the first, and cancelling three. Measured in isolation,
29 µs per record against 0.1 µs for awaiting the delivery itself; in a worker's
profile, a tenth of its time — a cause of the slowness reported upstream (Faust
issue 563).

A delivery waits only in those three cases, all of which can be seen before it
starts. :func:`deliverable` looks; when none holds, the record is delivered in place,
and otherwise exactly as Faust does. Everything else in the loop is Faust's, line for
line, but for a topic or group the worker is refused (see the loop). The version is
pinned in ``pyproject.toml``: a new one must be read again.

The consumer's heartbeats and commits are refused in the same way when the
worker loses its group's ACL: Faust then crashes the worker, exit code 1, saying
only "Drain messages raised: GroupAuthorizationFailedError" (a heartbeat's refusal
comes out of the loop) or "Got exception: …" (a commit's). The loop and
:func:`patch` make those stops say which group and what to grant, as a refused read
or write does (``streams.app``).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from mode import Service


def deliverable(consumer, message) -> bool:
    """Whether handing ``message`` to its streams can finish without waiting.

    The waits of Faust's delivery (``Conductor._build_handler``'s ``on_message``):
    the conductor's lock on its partition → streams map, the flow control a
    rebalance suspends, the producer's buffer over its limit, and the buffer of a
    stream reading the partition when it is full.

    >>> from types import SimpleNamespace as S
    >>> import asyncio
    >>> class Flow:
    ...     def __init__(self, on): self.on = on
    ...     def is_active(self): return self.on
    >>> def consumer(flow=True, buffered=0, lock=False, full=False):
    ...     app = S(flow_control=Flow(flow),
    ...             producer=S(buffer=S(size=buffered, max_messages=100)),
    ...             topics=S(_tp_to_callback_lock=S(locked=lambda: lock),
    ...                      _tp_index={"tp": [S(queue=S(full=lambda: full))]}))
    ...     return S(app=app, suspend_flow=asyncio.Event())
    >>> message = S(tp="tp")
    >>> deliverable(consumer(), message)
    True
    >>> [deliverable(c, message) for c in (consumer(flow=False), consumer(buffered=101),
    ...                                    consumer(lock=True), consumer(full=True))]
    [False, False, False, False]
    """
    app = consumer.app
    if consumer.suspend_flow.is_set() or not app.flow_control.is_active():
        return False
    buffer = app.producer.buffer
    if buffer.size > buffer.max_messages:
        return False
    conductor = app.topics
    if conductor._tp_to_callback_lock.locked():
        return False
    return not any(channel.queue.full() for channel in conductor._tp_index.get(message.tp, ()))


def patch() -> None:
    """Make Faust's consumers deliver in place what :func:`deliverable` allows, and
    stop with the cluster's reason when it refuses them their group's commit."""
    from faust.transport import consumer as faust_consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    Consumer = faust_consumer.Consumer
    if getattr(Consumer, "_fundwatch_drain", False):
        return
    Consumer._drain_messages = _drain_messages
    Consumer._fundwatch_drain = True
    crash = AIOKafkaConsumerThread.crash

    async def crash_unless_refused(self, reason: BaseException) -> None:
        # Faust's commit catches every error and crashes the consumer thread with it
        # (aiokafka logged "OffsetCommit failed for group …" just before).
        if isinstance(reason, GroupAuthorizationFailedError):
            _stop_refused(reason)
        await crash(self, reason)

    AIOKafkaConsumerThread.crash = crash_unless_refused


def _stop_refused(exc: TopicAuthorizationFailedError | GroupAuthorizationFailedError) -> None:
    """Stop the worker for a topic it may no longer read or a group it may no longer
    use (``streams.app.stop_for_the_cluster``)."""
    from streams.app import stop_for_the_cluster

    if isinstance(exc, TopicAuthorizationFailedError):
        stop_for_the_cluster(f"refused to let the worker read {exc.args[0]}", exc)
    else:
        stop_for_the_cluster(f"refused the worker its group {exc.args[0]}", exc)


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - a worker runs it
    # Faust 0.15.3's Consumer._drain_messages; the one change is marked "fundwatch".
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator, getmany(timeout=1.0))

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:  # noqa: SIM102 - Faust's, as it is
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # fundwatch: nothing on the way can wait, so nothing has to
                        # be abandoned: deliver in place (see the module's doc).
                        if deliverable(self, message):
                            await callback(message)
                        else:
                            await self.wait_first(
                                callback(message), self.suspend_flow.wait()
                            )
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
        # fundwatch: a topic the worker may no longer read, or its group (a heartbeat
        # refused): an ACL taken away while it ran. Faust would crash the app, exit
        # code 1, saying only "Drain messages raised"; this says which topic or group
        # and what to grant, as a refused write does.
        _stop_refused(exc)
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)  # noqa: TRY401 - Faust's
        raise
    finally:
        unset_flag(flag_consumer_fetching)
