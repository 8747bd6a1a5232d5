"""``fundwatch`` — the command line of the contract."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from infra.config import ConfigError, Settings
from rules.core import RuleConfigError
from rules.registry import RegistryError


def _simulate(args) -> int:
    from streams.simulate import simulate, write

    sim = simulate(days=args.days, seed=args.seed, scale=args.scale)
    paths = write(sim, Path(args.out))
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"{len(sim.events)} records, {len(sim.truth)} injected anomalies")
    return 0


def _validate(args) -> int:
    from streams.validate import validate_file

    return validate_file(args.file, sys.stdout)


def _worker(args, settings: Settings) -> int:
    from streams.app import run_worker

    if settings.embedded_broker:
        from infra.broker import EmbeddedBroker

        broker = EmbeddedBroker(settings).start()
        settings = settings.with_(bootstrap_servers=broker.bootstrap_servers)
        print(f"no cluster configured: embedded broker on {broker.bootstrap_servers}",
              file=sys.stderr)
    else:
        from infra.broker import prepare_cluster

        prepare_cluster(settings)
    run_worker(settings, loglevel=args.loglevel)
    return 0


# The demo's province: long enough for every rule to judge (the siphon rule needs
# three baseline months before the month it judges), small enough to stream in
# well under a minute.
DEMO_DAYS = 125
DEMO_SCALE = 0.1


def _demo(args, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, days=args.days, seed=args.seed, scale=args.scale,
                    timeout_s=args.timeout,
                    out_dir=Path(args.out_dir))


def _bench(args) -> int:
    import orjson

    from streams.bench import run_bench

    print(orjson.dumps(run_bench(quick=args.quick)).decode(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fundwatch", description=(
        "Fund risk early warning for basic medical insurance under provincial pooling."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on embedded defaults")
    p.add_argument("--days", type=int, default=DEMO_DAYS,
                   help=f"simulated days (default {DEMO_DAYS}: four months of baseline "
                        "and one judged, for the monthly siphon rule)")
    p.add_argument("--scale", type=float, default=DEMO_SCALE,
                   help=f"volume relative to the simulator's default province "
                        f"(default {DEMO_SCALE})")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=180.0,
                   help="give up waiting for the pipeline after this many seconds")
    p.add_argument("--out-dir", default="demo-out", help="where the demo writes its files")

    p = sub.add_parser("worker", help="a stream worker against the configured cluster")
    p.add_argument("--loglevel", default="info")

    p = sub.add_parser("simulate", help="write a synthetic province as JSONL + ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scale", type=float, default=1.0)

    p = sub.add_parser("validate", help="check a JSONL file against the contract")
    p.add_argument("file")

    p = sub.add_parser("bench", help="measure the live path through the broker")
    p.add_argument("--quick", action="store_true", help="a short run (about a minute)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    try:
        settings = Settings.load()
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "worker":
            return _worker(args, settings)
        if args.command == "demo":
            return _demo(args, settings)
        if args.command == "bench":
            return _bench(args)
    except (ConfigError, RuleConfigError, RegistryError) as exc:
        print(f"fundwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
