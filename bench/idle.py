"""What idle workers and the embedded broker cost: cores kept busy with nothing to read.

Tansu answers a fetch only when its wait is up, so a worker that has read everything
polls the broker once per fetch wait (``FUNDWATCH_FETCH_MAX_WAIT_MS``, 20 ms), and both
spend CPU on it all night. Once no record has come for a second the worker waits
``FUNDWATCH_FETCH_QUIET_WAIT_MS`` instead (``streams.app.FetchWait``). This measures
both, side by side in one run on one broker: for each quiet wait, one worker and then
two in one consumer group are started, one record is put through, and after they
have settled the cores the workers, the broker and this process keep busy are read
from ``/proc`` over ``--seconds``:

    python bench/idle.py                         # quiet waits 0 (off) and 200 ms
    python bench/idle.py --quiet-ms 0,100,500 --seconds 20

One JSON line per (quiet wait, workers); the last line compares each setting's
workers + broker with the first's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.broker import EmbeddedBroker
from infra.config import Settings
from streams.bench import _cpu_now, _cpu_used, _phase_settings, _until_accounted
from streams.live import produce, watched_workers
from streams.simulate import simulate

SETTLE_S = 25.0  # past the group's joining and the first quiet second


async def idle_cores(settings: Settings, record: bytes, workers: int, seconds: float,
                     broker, out: Path) -> dict:
    logs = [out / f"idle-{workers}-{n}.log" for n in range(workers)]
    async with watched_workers(settings, logs) as (watcher, procs):
        await produce(settings, [record])
        await _until_accounted(watcher, procs[0], 1, 180)
        await watcher.until(lambda o: False, SETTLE_S)
        before = _cpu_now(procs, broker)
        await asyncio.sleep(seconds)
        after = _cpu_now(procs, broker)
    used, wall = _cpu_used(before, after)
    return {who: None if seconds is None else round(seconds / wall, 3)
            for who, seconds in used.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quiet-ms", default="0,200",
                        help="quiet fetch waits to compare, comma-separated (0: off)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    record = simulate(days=1, seed=11).events[0]
    out = Path(tempfile.mkdtemp(prefix="fundwatch-idle-"))
    base = Settings(partitions=4)
    totals = {}
    with EmbeddedBroker(base, log_path=out / "broker.log") as broker:
        base = base.with_(bootstrap_servers=broker.bootstrap_servers)
        for quiet_ms in (int(x) for x in args.quiet_ms.split(",")):
            for workers in (1, 2):
                settings = _phase_settings(base.with_(fetch_quiet_wait_ms=quiet_ms),
                                           f"idle{quiet_ms}-{workers}", out)
                busy = asyncio.run(idle_cores(settings, record, workers, args.seconds,
                                              broker.process, out))
                totals[(quiet_ms, workers)] = (busy["workers"] or 0) + (busy["broker"] or 0)
                print(json.dumps({"quiet_wait_ms": quiet_ms, "workers": workers,
                                  "cores_busy": busy, "seconds": args.seconds,
                                  "cores": os.cpu_count()}), flush=True)
    first = int(args.quiet_ms.split(",")[0])
    print(json.dumps({"workers_and_broker_cores_busy": {
        f"{q} ms, {w} worker(s)": round(v, 3) for (q, w), v in totals.items()},
        "relative_to_first": {f"{q} ms, {w} worker(s)": round(v / totals[(first, w)], 2)
                              for (q, w), v in totals.items() if totals[(first, w)]}}))


if __name__ == "__main__":
    main()
