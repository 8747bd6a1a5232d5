"""Ingest throughput of one worker beside a raw aiokafka consumer, in one run.

    python bench/ingest.py [--days 20] [--partitions 4]

Simulated settlements are produced to the embedded broker first. Then, on the same
topic, (1) a raw aiokafka consumer (``getmany`` + orjson parse, fresh group) reads
them all, and (2) one ``fundwatch worker`` (every rule on) ingests them; its rate
is counted from the first record it accounts for to the last, through the
metrics it publishes each second. The last line is JSON with both rates and their
ratio — a ratio, because these machines are shared and absolute rates are noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.broker import EmbeddedBroker  # noqa: E402
from infra.config import Settings  # noqa: E402
from streams.live import Watcher, produce, start_worker, stop_worker  # noqa: E402
from streams.simulate import simulate  # noqa: E402


async def raw_consumer_rate(settings: Settings, topics: list[str], total: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.bootstrap_servers,
                                group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    n = 0
    first = None
    try:
        while n < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            for messages in batches.values():
                if messages and first is None:
                    first = time.perf_counter()
                for m in messages:
                    try:
                        orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        pass  # the simulation's malformed records
                n += len(messages)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - first)


async def worker_rate(settings: Settings, total: int, out: Path) -> tuple[float, float]:
    watcher = Watcher(settings)
    await watcher.start()
    started = time.perf_counter()
    worker = start_worker(settings, out / "worker.log")
    first = [None]

    def mark(o):
        if first[0] is None and o.accounted > 0:
            first[0] = time.perf_counter()
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited ({worker.returncode}); see {out/'worker.log'}")

    try:
        ok = await watcher.until(lambda o: o.accounted >= total, 900, tick=mark)
        end = time.perf_counter()
    finally:
        stop_worker(worker)
        await watcher.stop()
    if not ok:
        raise RuntimeError(f"worker accounted for {watcher.observed.accounted}/{total}")
    return total / (end - first[0]), end - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fundwatch-bench-"))
    sim = simulate(days=args.days, seed=11)
    events = sim.events
    settings = Settings(partitions=args.partitions, data_dir=str(out / "data"),
                        db_url=f"sqlite:///{out / 'alerts.db'}")
    with EmbeddedBroker(settings, log_path=out / "broker.log") as broker:
        settings = settings.with_(bootstrap_servers=broker.bootstrap_servers)
        t0 = time.perf_counter()
        n = await produce(settings, events)
        produce_s = time.perf_counter() - t0
        print(f"produced {n:,} records in {produce_s:.1f} s", flush=True)
        raw = await raw_consumer_rate(settings, [settings.topic("settlements"),
                                                 settings.topic("contributions")], n)
        print(f"raw aiokafka consumer: {raw:,.0f} records/s", flush=True)
        rate, wall = await worker_rate(settings, n, out)
        print(f"fundwatch worker: {rate:,.0f} records/s ingested "
              f"(validate → admit → detect → alerts; {wall:.1f} s including start-up)",
              flush=True)
    print(orjson.dumps({"records": n, "partitions": args.partitions,
                        "events_per_s": round(rate, 1),
                        "raw_consumer_events_per_s": round(raw, 1),
                        "ratio": round(rate / raw, 4)}).decode())


if __name__ == "__main__":
    asyncio.run(main())
