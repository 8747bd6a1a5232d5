"""A worker whose consumer stands past the committed offset it has just been sought
to (or past the partition's beginning, where nothing was committed), once per source
partition — the fault seen at hand-overs that
streams/offset_guard.py guards against, made to happen every time.

Run as ``python -m tests.faulty_worker`` with the worker's environment. This is
fault injection into the real consumer (aiokafka's seek), not a stand-in: the
broker, Faust and the worker are the real ones.
"""
from __future__ import annotations

import sys

from aiokafka import AIOKafkaConsumer

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


AIOKafkaConsumer.seek_to_committed = seek_to_committed

if __name__ == "__main__":
    from streams.cli import main

    sys.exit(main(["worker"]))
