"""Hand-over soak: the scenario of tests/test_scale_out.py::test_two_workers_then_one,
run again and again, counting what a hand-over loses.

Two workers share four partitions; one is stopped (SIGTERM) a third of the way
through a simulated province; the other takes its partitions over. After each run
the ledger (read back from its changelog) must hold every valid record's id, and the
alerts must equal the offline driver's. Also counted: how often the worker's offset
guard sent a partition back (streams/offset_guard.py), read from the worker logs.

    python bench/handover.py --runs 8            # 8 runs on one embedded broker
    python bench/handover.py --runs 8 --busy 2   # the same beside 2 busy CPU loops

Each run prints one line; the last line is a JSON summary. A race shows only now and
then, so one run proves little: that is why this is a soak and not a unit test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from infra.config import Settings  # noqa: E402
from rules.core import DetectionCore, load_rules  # noqa: E402
from streams.live import hand_over, read_table, start_worker, stop_worker  # noqa: E402
from streams.offline import OfflinePipeline  # noqa: E402
from streams.records import Rejected, Settlement, parse  # noqa: E402
from streams.simulate import simulate  # noqa: E402


def _busy() -> None:
    while True:
        sum(range(10000))


def one_run(broker, work: Path, lines, offline, valid_ids) -> dict:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"h{tag}.",
                        app_id=f"handover-{tag}", partitions=4, data_dir=str(work / "data"),
                        db_url=f"sqlite:///{work / 'alerts.db'}")
    ensure_topics(broker.bootstrap_servers, settings)
    first = start_worker(settings, work / "worker-a.log")
    second = start_worker(settings, work / "worker-b.log")

    try:
        done, observed = asyncio.run(hand_over(settings, lines, first, offline.alerts))
    finally:
        stop_worker(first)
        stop_worker(second)
    ledger = read_table(settings, "ledger")
    missing = sorted(i for i in valid_ids if f"s:{i}" not in ledger and f"c:{i}" not in ledger)
    logs = "".join(p.read_text() for p in work.glob("worker-*.log"))
    return {"done": done, "accounted": observed.accounted, "records": len(lines),
            "missing_from_ledger": len(missing),
            "alerts_equal": observed.alerts == offline.alerts,
            "guard_seeks": logs.count("seeking back")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="busy CPU loops beside the run")
    args = parser.parse_args()
    lines = simulate(days=3, seed=3).events
    offline = OfflinePipeline(DetectionCore(load_rules(), partitions=4)).feed_all(lines)
    valid_ids = set()
    for raw in lines:
        try:
            event = parse(raw)
        except Rejected:
            continue
        valid_ids.add(event.settlement_id if isinstance(event, Settlement)
                      else event.contribution_id)
    loops = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    results = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                EmbeddedBroker(Settings(), log_path=Path(tmp) / "tansu.log") as broker:
            for n in range(1, args.runs + 1):
                work = Path(tmp) / f"run{n}"
                work.mkdir()
                result = one_run(broker, work, lines, offline, valid_ids)
                results.append(result)
                print(f"run {n}: {json.dumps(result)}", flush=True)
    finally:
        for loop in loops:
            loop.terminate()
    lossy = [r for r in results if r["missing_from_ledger"] or r["accounted"] < r["records"]]
    print(json.dumps({"runs": len(results), "busy_loops": args.busy,
                      "runs_with_loss": len(lossy),
                      "records_lost": sum(r["missing_from_ledger"] for r in results),
                      "runs_alerts_differ": sum(not r["alerts_equal"] for r in results),
                      "guard_seeks": sum(r["guard_seeks"] for r in results),
                      "elapsed_s": round(time.monotonic() - started, 1)}))
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
