"""What a worker writes to Kafka per record, and what compressing it saves the broker.

A settlement is read once from its source topic, but written several times: to the
admission hop (its raw text and its canonical form), to the detect hop (its canonical
form once per detect partition one of its keys hashes to), to the changelogs (its
ledger entry, the rule states it changed) and, rarely, as alerts and scores. The
broker's CPU follows those bytes. This runs the bench's scale-out phase (one worker,
then two in one group, on a fresh set of topics each; 30 simulated days) for each
``--codecs`` value (``FUNDWATCH_COMPRESSION_TYPE``), alternating their order round by
round on one broker, and after each one-worker run counts the bytes and messages
each topic holds:

    python bench/compression.py                      # none and zstd, two rounds
    python bench/compression.py --codecs none,zstd,lz4 --rounds 1

One JSON line per run and topic count; the last line gives each codec's means and
their ratio to the first codec's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.broker import EmbeddedBroker
from infra.config import Settings
from streams.bench import SCALE_DAYS, _phase_settings, _scale
from streams.simulate import simulate


async def bytes_per_topic(bootstrap_servers: str, prefix: str) -> dict[str, tuple[int, int]]:
    """(bytes of keys and values, messages) each topic named ``prefix...`` holds, read
    back whole (decompressed: what the worker wrote before the codec)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                enable_auto_commit=False, fetch_max_bytes=64 << 20,
                                max_partition_fetch_bytes=16 << 20)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith(prefix)]
        parts = [TopicPartition(t, p) for t in topics
                 for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        size, count = Counter(), Counter()
        # Until a fetch brings nothing for 2 s: the topics are no longer written to,
        # and Tansu's reported ends are not exact (infra/tansu.py).
        while got := await consumer.getmany(timeout_ms=2000, max_records=100_000):
            for tp, records in got.items():
                for record in records:
                    size[tp.topic] += len(record.value or b"") + len(record.key or b"")
                    count[tp.topic] += 1
    finally:
        await consumer.stop()
    return {topic: (size[topic], count[topic]) for topic in topics if count[topic]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default="none,zstd")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    codecs = args.codecs.split(",")
    events = simulate(days=SCALE_DAYS, seed=11).events
    out = Path(tempfile.mkdtemp(prefix="fundwatch-compression-"))
    runs: dict[str, list[dict]] = {codec: [] for codec in codecs}
    base = Settings(partitions=4)
    with EmbeddedBroker(base, log_path=out / "broker.log") as broker:
        base = base.with_(bootstrap_servers=broker.bootstrap_servers)
        for n in range(args.rounds):
            for codec in codecs if n % 2 == 0 else codecs[::-1]:
                run = {"codec": codec, "round": n}
                for workers in (1, 2):
                    settings = _phase_settings(base.with_(compression_type=codec),
                                               f"{codec}{workers}r{n}", out)
                    scaled = asyncio.run(_scale(settings, events, workers, out,
                                                broker.process))
                    run[f"{workers}_worker_events_per_s"] = round(scaled["events_per_s"], 1)
                    run[f"{workers}_worker_cpu_us_per_record"] = (
                        scaled["cpu_us_per_record"] and round(scaled["cpu_us_per_record"], 1))
                    run[f"{workers}_worker_cores_busy"] = scaled["cores_busy"]
                    if workers == 1 and n == 0:
                        # The topics' prefix is the app id + ".", the changelogs'
                        # the app id + "-": the app id names both.
                        held = asyncio.run(bytes_per_topic(broker.bootstrap_servers,
                                                           settings.app_id))
                        print(json.dumps({"codec": codec, "records": len(events),
                                          "written_per_record": {
                            topic[len(settings.app_id) + 1:]: {
                                "bytes": round(b / len(events)), "messages":
                                round(m / len(events), 3)}
                            for topic, (b, m) in sorted(held.items(),
                                                        key=lambda kv: -kv[1][0])}}),
                              flush=True)
                runs[codec].append(run)
                print(json.dumps(run), flush=True)

    def mean(codec: str, field: str, who: str | None = None) -> float:
        values = [r[field][who] if who else r[field] for r in runs[codec]]
        return sum(values) / len(values)

    first = codecs[0]
    summary = {}
    for codec in codecs:
        summary[codec] = {
            "one_worker_events_per_s": round(mean(codec, "1_worker_events_per_s"), 1),
            "two_workers_events_per_s": round(mean(codec, "2_worker_events_per_s"), 1),
            "broker_cores_busy_two_workers": round(
                mean(codec, "2_worker_cores_busy", "broker"), 3),
            "workers_cores_busy_two_workers": round(
                mean(codec, "2_worker_cores_busy", "workers"), 3),
            "two_workers_vs_first_codec": round(
                mean(codec, "2_worker_events_per_s") / mean(first, "2_worker_events_per_s"), 3),
            "one_worker_vs_first_codec": round(
                mean(codec, "1_worker_events_per_s") / mean(first, "1_worker_events_per_s"), 3),
        }
    print(json.dumps({"summary": summary, "rounds": args.rounds, "records": len(events),
                      "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
