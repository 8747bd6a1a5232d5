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

    code = run_demo(settings, days=args.days, seed=args.seed, scale=args.scale,
                    timeout_s=args.timeout,
                    out_dir=Path(args.out_dir))
    if args.serve:
        from streams.demo import serve_inbox

        serve_inbox(settings, Path(args.out_dir), port=args.port)
    return code


def _load_registry(path: str | None, settings: Settings):
    from rules.registry import Registry

    path = path or settings.pools_path
    return Registry.load(path) if path else None


def _replay(args, settings: Settings) -> int:
    from streams import heap
    from streams.replay import (Period, Progress, kafka_records, replay, summary_lines,
                                write_alerts, write_balances, write_scores)

    try:
        period = Period.parse(args.from_, args.to)
    except ValueError as exc:
        print(f"fundwatch replay: {exc}", file=sys.stderr)
        return 2
    topics = args.topic or ([settings.topic("settlements"), settings.topic("contributions")]
                            if args.kafka else [])
    if bool(topics) == bool(args.files):
        print("fundwatch replay: give FILEs, or --kafka / --topic to read from the cluster "
              "(not both)", file=sys.stderr)
        return 2
    if topics and settings.embedded_broker:
        print("fundwatch replay: --kafka needs FUNDWATCH_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    for path in args.files:
        if not Path(path).exists():
            print(f"fundwatch replay: {path}: no such file", file=sys.stderr)
            return 2
    registry = _load_registry(args.pools, settings)
    if topics:
        from infra.broker import check_access

        check_access(settings, topics=tuple(topics), role="auditor")
    source = kafka_records(settings, topics, period) if topics else None
    progress = Progress(sum(Path(f).stat().st_size for f in args.files))
    timeline = None
    if args.report:
        from sinks.balances import DailyBalances

        timeline = DailyBalances()
    with heap.settled():
        result = replay(args.files, settings, registry, close_input=not args.live_watermark,
                        period=period, progress=progress, timeline=timeline, source=source)
    write_alerts(result.alerts, args.alerts_out)
    if args.scores_out:
        n = write_scores(result.pipeline.scores, args.scores_out)
        print(f"scores: {n} scored settlements in {args.scores_out}", file=sys.stderr)
    if args.balances_out:
        rows = write_balances(result, registry, args.balances_out)
        print(f"balances: {rows} pool-months in {args.balances_out}", file=sys.stderr)
    if args.structural_out:
        from sinks.structural import structural_rows, write_structural

        rows = write_structural(structural_rows(result.pipeline.state, registry),
                                args.structural_out)
        print(f"structural risk: {rows} pool-months in {args.structural_out}", file=sys.stderr)
    if args.export:
        from sinks.balances import balance_rows, books_in, with_registry_pools
        from sinks.exports import write_exports

        rows = balance_rows(with_registry_pools(books_in(result.pipeline.state), registry))
        for path in write_exports(result.alerts, rows, args.export):
            print(f"export: {path}", file=sys.stderr)
    if args.report:
        _write_report(args, settings, registry, result, period, topics)
        print(f"report: {args.report}", file=sys.stderr)
    for line in summary_lines(result):
        print(line)
    return 0


def _write_report(args, settings, registry, result, period, topics) -> None:
    import hashlib
    import shlex
    from importlib.metadata import version

    from sinks.report import Provenance, ReplayFacts, render_report

    inputs = result.inputs or [{"source": t, "sha256": None, "records": 0} for t in topics]
    if topics:  # a topic has no file to hash: the positions read stand in for it
        inputs = [{"source": f"kafka topic {t}", "sha256": None, "records": result.lines}
                  for t in topics]
    pools_path = args.pools or settings.pools_path
    provenance = Provenance(
        version=version("fundwatch"),
        command=" ".join(shlex.quote(a) for a in ["fundwatch", *args.argv]),
        inputs=inputs,
        registry={"path": pools_path, "sha256": hashlib.sha256(
            Path(pools_path).read_bytes()).hexdigest()} if pools_path else None,
        period=(period.start, period.end) if period else None,
        lateness_s=settings.allowed_lateness_s, config_path=settings.config_path)
    html = render_report(ReplayFacts(result.pipeline, result.lines, result.alerts, provenance,
                                     registry, result.timeline, result.outside_period))
    Path(args.report).write_text(html, encoding="utf-8")


def _rule_state(args, settings: Settings, registry, command: str, prefix: str
                ) -> tuple[dict, str] | None:
    """The rule-state slots starting with ``prefix``: from a replay of the FILEs, or
    from the running deployment's changelog; and where they came from."""
    if args.files:
        import io

        from streams.replay import replay

        # The rejected lines are `fundwatch validate`'s and `replay`'s to list.
        result = replay(args.files, settings, registry, report=io.StringIO())
        rejected = result.pipeline.counts["rejected"]
        return result.pipeline.state, ", ".join(args.files) + " (replayed" + (
            f"; {rejected} rejected records left out)" if rejected else ")")
    if settings.embedded_broker:
        print(f"fundwatch {command}: no deployment to read (FUNDWATCH_BOOTSTRAP_SERVERS is "
              "unset); give a FILE to replay instead", file=sys.stderr)
        return None
    from infra.broker import check_access
    from streams.live import read_table

    check_access(settings, topics=(settings.changelog_topic("rule-state"),), role="auditor")
    return (read_table(settings, "rule-state", prefix=prefix),
            f"deployment {settings.app_id} at {settings.bootstrap_servers}")


def _structural(args, settings: Settings) -> int:
    """Each pool's standard (risk-adjusted) expenditure, actual spending and
    structural share (sinks.structural), from a replay or the deployment."""
    from sinks.structural import (group_rows, latest, render_structural, structural_rows,
                                  write_groups, write_structural)

    registry = _load_registry(args.pools, settings)
    if args.groups_out and not args.files:
        print("fundwatch structural: --groups-out needs the FILEs the settlements are in",
              file=sys.stderr)
        return 2
    found = _rule_state(args, settings, registry, "structural", "management_overspend|")
    if found is None:
        return 2
    state, where = found
    rows = structural_rows(state, registry, month=args.month)
    if not rows:
        print(f"fundwatch structural: no month judged yet in {where}"
              + (f" for {args.month}" if args.month else ""), file=sys.stderr)
        return 1
    print(f"structural risk of {where}")
    for line in render_structural(rows if args.month else latest(rows)):
        print(line)
    if args.csv:
        n = write_structural(rows, args.csv)
        print(f"{n} pool-months in {args.csv}", file=sys.stderr)
    if args.groups_out:
        from rules.builtin.management_overspend import ManagementOverspend
        from streams.records import Rejected, parse
        from streams.replay import read_lines

        conf = {k: v for k, v in settings.rules.get("management_overspend", {}).items()
                if k not in ("enabled", "provinces")}
        rule = ManagementOverspend(registry=registry, **conf)

        def events():
            for path in args.files:
                for line in read_lines(path):
                    try:
                        yield parse(line)
                    except Rejected:
                        continue
        n = write_groups(group_rows(events(), state, rule), args.groups_out)
        print(f"{n} inpatient settlements with their groups in {args.groups_out}",
              file=sys.stderr)
    return 0


def _pools(args, settings: Settings) -> int:
    from rules.builtin.pool_balance_low import PoolBalanceLow
    from rules.provincial import provincial_positions, render_positions
    from sinks.balances import books_in, pool_lines, render_pools, with_registry_pools

    registry = _load_registry(args.pools, settings)
    found = _rule_state(args, settings, registry, "pools", "pool_fund|")
    if found is None:
        return 2
    state, where = found
    books = with_registry_pools(books_in(state), registry)
    conf = dict(settings.rules.get("pool_balance_low", {}))
    conf.pop("enabled", None)
    rule = PoolBalanceLow(registry=registry, **conf)
    print(f"pools of {where}")
    for line in render_pools(pool_lines(books, registry, rule)):
        print(line)
    if registry is not None:
        for line in render_positions(provincial_positions(registry, books)):
            print(line)
    return 0


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _bench(args) -> int:
    import orjson

    from streams.bench import SCALE_ROUNDS, missed, run_bench

    result = run_bench(quick=args.quick, table_store=args.store,
                       scale_rounds=args.scale_rounds or SCALE_ROUNDS)
    print(orjson.dumps(result).decode(), flush=True)
    return 1 if args.require_targets and missed(result["targets"]) else 0


#: Each role's principal unless given: the worker's is the compose file's user.
ACL_PRINCIPALS = {"worker": "User:fundwatch", "feeder": "User:fundwatch-feeder",
                  "auditor": "User:fundwatch-auditor", "alert_reader": "User:fundwatch-alerts"}


def _acls(args, settings: Settings) -> int:
    from infra.acls import acl_commands

    principals = {role: getattr(args, role) for role in ACL_PRINCIPALS
                  if getattr(args, role) != "-"}
    try:
        commands = acl_commands(settings, principals)
    except ValueError as exc:
        print(f"fundwatch acls: {exc}", file=sys.stderr)
        return 2
    print(f"# fundwatch's ACLs for topics {settings.topic_prefix}* and app id "
          f"{settings.app_id}: run with BOOTSTRAP set and admin.properties holding an "
          f"administrator's credentials")
    for role, principal in principals.items():
        print(f"# {role}: {principal}")
    print("\n".join(commands))
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
    p.add_argument("--serve", action="store_true",
                   help="after the run, leave the supervision centers' inbox running on "
                        "the demo's store (prints its address and demo logins)")
    p.add_argument("--port", type=int, default=8080, help="the inbox's port (with --serve)")

    p = sub.add_parser("worker", help="a stream worker against the configured cluster")
    p.add_argument("--loglevel", default="info")

    p = sub.add_parser("simulate", help="write a synthetic province as JSONL + ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scale", type=float, default=1.0)

    p = sub.add_parser("validate", help="check a JSONL file against the contract")
    p.add_argument("file")

    p = sub.add_parser("replay", help="a historical stream through the detectors, offline")
    p.add_argument("files", nargs="*", metavar="FILE", help="JSONL (or .jsonl.gz) input")
    p.add_argument("--pools", help="the pool registry (pools/v1 YAML); default: "
                   "FUNDWATCH_POOLS_PATH")
    p.add_argument("--alerts-out", required=True, help="alert/v1 JSON lines")
    p.add_argument("--balances-out", help="one CSV row per pool and calendar month")
    p.add_argument("--scores-out", metavar="SCORES.jsonl",
                   help="write one JSON line per settlement an online model scored: "
                        '{"settlement_id": ..., "scores": {"phantom_bed": 0.93}}, in the '
                        "order they were scored (deterministic)")
    p.add_argument("--report", metavar="REPORT.html",
                   help="a self-contained HTML report to hand on")
    p.add_argument("--structural-out", metavar="STRUCTURAL.csv",
                   help="each pool's standard (risk-adjusted) and actual expenditure and "
                        "structural share, per judged month")
    p.add_argument("--export", metavar="DIR",
                   help="alerts and balances as CSV and Parquet (pandas) in DIR")
    p.add_argument("--from", dest="from_", metavar="DATE",
                   help="replay only records with event time from this day (Asia/Shanghai) "
                        "or moment (with its offset)")
    p.add_argument("--to", metavar="DATE",
                   help="... up to the end of this day, or before this moment")
    p.add_argument("--kafka", action="store_true",
                   help="read the deployment's input topics instead of files (a fresh "
                        "consumer group; live consumers are not disturbed)")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC",
                   help="read this topic (repeatable) instead of files")
    p.add_argument("--live-watermark", action="store_true",
                   help="do not close the last days at the end of the input: judge only "
                        "what a live worker would have judged by then")

    p = sub.add_parser("pools", help="the pools' balances, months of payment and bands")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="replay these files; without: read the running deployment")
    p.add_argument("--pools", help="the pool registry (default: FUNDWATCH_POOLS_PATH)")

    p = sub.add_parser("structural", help="each pool's risk-adjusted standard expenditure, "
                                          "actual spending and structural share")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="replay these files; without: read the running deployment")
    p.add_argument("--pools", help="the pool registry (default: FUNDWATCH_POOLS_PATH)")
    p.add_argument("--month", metavar="YYYY-MM",
                   help="this month (default: each province's last judged month)")
    p.add_argument("--csv", metavar="OUT.csv", help="every judged pool-month as CSV")
    p.add_argument("--groups-out", metavar="GROUPS.csv",
                   help="each inpatient settlement's groups (AGG, DG, MG, HMG) and standard "
                        "payment (needs FILEs)")

    p = sub.add_parser("bench", help="measure the live path through the broker")
    p.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    p.add_argument("--store", choices=("memory", "rocksdb"), default="memory",
                   help="where the workers keep their large tables (FUNDWATCH_TABLE_STORE)")
    p.add_argument("--require-targets", action="store_true",
                   help="exit 1 if a target the run measured is not met (a performance gate)")
    p.add_argument("--scale-rounds", type=_positive_int, default=None, metavar="N",
                   help="rounds of one and two workers, in alternating order (default 3; "
                        "not with --quick)")

    p = sub.add_parser("acls", help="the Kafka ACLs each of fundwatch's users needs, as "
                                    "kafka-acls.sh commands for a cluster's administrator")
    for role, principal in ACL_PRINCIPALS.items():
        p.add_argument(f"--{role.replace('_', '-')}", default=principal, metavar="User:NAME",
                       help=f"the {role.replace('_', ' ')}'s principal (default {principal}; "
                            f"'-': leave this role out)")

    from rules.commands import add_parser as add_rules_parser

    add_rules_parser(sub)  # fundwatch rules list / explain / test / new / events

    from sinks.commands import add_parser as add_alerts_parser

    add_alerts_parser(sub)  # fundwatch alerts list / show / ack / resolve / dismiss / ...

    from sinks.inbox_commands import add_parsers as add_inbox_parsers

    add_inbox_parsers(sub)  # fundwatch serve / users add / list / token

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the report
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
        if args.command == "replay":
            return _replay(args, settings)
        if args.command == "pools":
            return _pools(args, settings)
        if args.command == "structural":
            return _structural(args, settings)
        if args.command == "bench":
            return _bench(args)
        if args.command == "acls":
            return _acls(args, settings)
        if args.command == "rules":
            from rules.commands import run as run_rules

            return run_rules(args, settings)
        if args.command == "alerts":
            from sinks.commands import run as run_alerts

            return run_alerts(args, settings)
        if args.command in ("serve", "users"):
            from sinks import inbox_commands

            return getattr(inbox_commands, args.command)(args, settings)
    except (ConfigError, RuleConfigError, RegistryError) as exc:
        print(f"fundwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
