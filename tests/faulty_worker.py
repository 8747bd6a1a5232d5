"""A worker with a fault injected into its real consumer (aiokafka), chosen by the
environment variable ``FAULT``:

``jump`` (the default): the consumer stands past the committed offset it has just
been sought to (or past the partition's beginning, where nothing was committed),
once per source partition — the fault seen at hand-overs that
streams/offset_guard.py guards against, made to happen every time.

``no_committed_answer``: the group coordinator never answers the consumer's own
request for a partition's committed offset — the request aiokafka makes for a
partition it has no position for (every partition, right after an assignment).
Its fetcher waits for that answer with the broker marked busy, and fetches nothing
from any partition of that broker.

``lost_in_queue``: once the worker is ready, the first SKIP records of each
source partition handed to the agents' queues are not put there — records
delivered by the consumer that never reach their agent, as when Faust cleared the
queues at the end of a recovery (streams/offset_guard.py, ``patch_flow_resume``).

``lost_in_queue_unhealed``: the same, with the stall check's search for such
records switched off: what is committed must stay short of them.

Run as ``python -m tests.faulty_worker`` with the worker's environment. This is
fault injection into the real consumer, not a stand-in: the broker, Faust and the
worker are the real ones.
"""
from __future__ import annotations

import asyncio
import os
import sys

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.subscription_state import TopicPartitionState
from mode.utils.queues import FlowControlQueue

SKIP = 3  # records per source partition the consumer jumps over
_original = AIOKafkaConsumer.seek_to_committed
_jumped: set = set()


async def seek_to_committed(self, *partitions):
    committed = await _original(self, *partitions)
    for tp, offset in committed.items():
        # No committed offset (None): the consumer would start at the beginning.
        if tp.topic.endswith(".settlements") and tp not in _jumped:
            _jumped.add(tp)
            self.seek(tp, (offset or 0) + SKIP)
    return committed


def fetch_committed(self):
    return asyncio.get_running_loop().create_future()  # never answered


_lost: dict = {}
_put = FlowControlQueue.put_nowait_enhanced


def put_nowait_enhanced(self, value, **kwargs):
    message, app = getattr(value, "message", None), getattr(value, "app", None)
    if (message is not None and message.topic.endswith(".settlements")
            and app is not None and not app.rebalancing
            and _lost.get(message.tp, 0) < SKIP):
        _lost[message.tp] = _lost.get(message.tp, 0) + 1
        return False  # as if the queue had been cleared under it
    return _put(self, value, **kwargs)


FAULT = os.environ.get("FAULT", "jump")
if FAULT == "jump":
    AIOKafkaConsumer.seek_to_committed = seek_to_committed
elif FAULT == "no_committed_answer":
    from streams import offset_guard

    TopicPartitionState.fetch_committed = fetch_committed
    # The worker's own limits, shortened so that the test sees it give up in seconds.
    offset_guard.UNANSWERED_AFTER_S, offset_guard.FETCHLESS_EXIT_S = 3.0, 8.0
elif FAULT in ("lost_in_queue", "lost_in_queue_unhealed"):
    FlowControlQueue.put_nowait_enhanced = put_nowait_enhanced
    if FAULT == "lost_in_queue_unhealed":
        from streams.offset_guard import ContiguousDelivery

        ContiguousDelivery.vanished = lambda *args, **kwargs: None
else:
    raise SystemExit(f"unknown FAULT {FAULT!r}")

if __name__ == "__main__":
    from streams.cli import main

    sys.exit(main(["worker"]))
