"""One worker's throughput on a longer stream than ``fundwatch bench``'s, and the same
side by side with an earlier commit.

``fundwatch bench`` times 20,985 records: 10 to 15 seconds of work, in which these
shared machines' noise (the same commit measured twice: 1,920 and 1,500 records/s)
hides a change of 20%. This runs the bench's throughput phase alone (simulated
settlements through the embedded broker into a real worker, every rule on, beside a
raw aiokafka consumer of the same topic) over ``--days`` of records, and with
``--against REV`` alternates this checkout with a git worktree of REV, each run a
fresh broker, so that both see the same machine:

    python bench/throughput.py --days 30                          # one run, this checkout
    python bench/throughput.py --days 30 --against 03101e5 --pairs 3

``--while-producing`` measures instead as the bench's scale-out phase does with one
worker: the worker settled in its group first, the stream produced while it runs,
and the worker's CPU time over the stream per record (``cpu_us_per_record``) —
the work a record costs, which the wall rate hides when the worker waits, or when a
second thread of it runs on the other core.

Each run prints one JSON line; with ``--against`` the last line is a summary (the
means, and the ratio of this checkout's mean to REV's).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# A run for another commit imports that commit's code (see _run_in).
sys.path.insert(0, os.environ.get("FUNDWATCH_CHECKOUT", str(HERE)))

from infra.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from infra.config import Settings  # noqa: E402
from streams.bench import _phase_settings, _scale, _throughput  # noqa: E402
from streams.simulate import simulate  # noqa: E402


def one_run(days: int, while_producing: bool = False) -> dict:
    # The same steps as run_bench's throughput phase, written out: a run for an
    # earlier commit imports that commit's streams.bench, which has no helper for them.
    events = simulate(days=days, seed=11).events
    out = Path(tempfile.mkdtemp(prefix="fundwatch-throughput-"))
    base = Settings(partitions=4)
    with EmbeddedBroker(base, log_path=out / "broker.log") as broker:
        base = base.with_(bootstrap_servers=broker.bootstrap_servers)
        settings = _phase_settings(base, "throughput", out)
        ensure_topics(broker.bootstrap_servers, settings)
        if while_producing:
            scaled = asyncio.run(_scale(settings, events, 1, out))
            # (Before 90f898d, _scale returned the two figures as a pair.)
            rate, cpu = ((scaled["events_per_s"], scaled["cpu_us_per_record"])
                         if isinstance(scaled, dict) else scaled)
            return {"records": len(events), "events_per_s": round(rate, 1),
                    "cpu_us_per_record": cpu and round(cpu, 1), "while_producing": True,
                    "days": days, "cores": os.cpu_count()}
        t = asyncio.run(_throughput(settings, events, out))
    return {"records": t["records"], "events_per_s": round(t["events_per_s"], 1),
            "raw_consumer_events_per_s": round(t["raw_consumer_events_per_s"], 1),
            "ratio": round(t["events_per_s"] / t["raw_consumer_events_per_s"], 4),
            "peak_rss_mb": t["peak_rss_mb"] and round(t["peak_rss_mb"], 1),
            "days": days, "cores": os.cpu_count()}


def _run_in(checkout: Path, days: int, while_producing: bool) -> dict:
    """This script, run in a child process that imports ``checkout``'s code (the
    worker it starts inherits the same path and directory)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "FUNDWATCH_CHECKOUT": str(checkout)}
    flags = ["--while-producing"] if while_producing else []
    # This file, not the checkout's: an earlier commit's may not know the flag.
    done = subprocess.run([sys.executable, __file__, "--days", str(days), *flags],
                          cwd=checkout, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _remove_worktree(path: Path) -> None:
    """Seen once: the removal right after the last run failed silently and left the
    worktree registered (a stopping worker still writing its data directory, it
    seems); a second try a moment later succeeded."""
    for _ in range(3):
        done = subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                               str(path)], check=False, capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(2)
    print(f"could not remove the worktree {path}: {done.stderr.strip()}", file=sys.stderr)


def side_by_side(rev: str, days: int, pairs: int, while_producing: bool = False) -> dict:
    other = Path(tempfile.mkdtemp(prefix="fundwatch-against-")) / "checkout"
    subprocess.run(["git", "-C", str(HERE), "worktree", "add", "-q", "--detach",
                    str(other), rev], check=True)
    runs: dict[str, list[float]] = {"this": [], rev: []}
    cpu: dict[str, list[float]] = {"this": [], rev: []}
    try:
        for n in range(pairs):
            # Alternate which goes first: a machine slowing down mid-way hits both.
            order = [("this", HERE), (rev, other)]
            for name, checkout in order if n % 2 == 0 else order[::-1]:
                result = _run_in(checkout, days, while_producing)
                runs[name].append(result["events_per_s"])
                if result.get("cpu_us_per_record"):
                    cpu[name].append(result["cpu_us_per_record"])
                print(json.dumps({"checkout": name, **result}), flush=True)
    finally:
        _remove_worktree(other)
    mean = {name: sum(v) / len(v) for name, v in runs.items()}
    summary = {"this_events_per_s": runs["this"], "against": rev,
               "against_events_per_s": runs[rev],
               "this_mean": round(mean["this"], 1), "against_mean": round(mean[rev], 1),
               "ratio": round(mean["this"] / mean[rev], 3), "days": days,
               "cores": os.cpu_count()}
    if cpu["this"] and cpu[rev]:
        cpu_mean = {name: sum(v) / len(v) for name, v in cpu.items()}
        summary.update(this_cpu_us_per_record=cpu["this"],
                       against_cpu_us_per_record=cpu[rev],
                       cpu_ratio=round(cpu_mean["this"] / cpu_mean[rev], 3))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=30, help="days of simulated records")
    p.add_argument("--against", metavar="REV", help="alternate with this git commit")
    p.add_argument("--pairs", type=int, default=3, help="runs of each, with --against")
    p.add_argument("--while-producing", action="store_true",
                   help="produce while the worker runs; report its CPU per record")
    args = p.parse_args()
    if args.against:
        print(json.dumps(side_by_side(args.against, args.days, args.pairs,
                                      args.while_producing)))
    else:
        print(json.dumps(one_run(args.days, args.while_producing)))


if __name__ == "__main__":
    main()
