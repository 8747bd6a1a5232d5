"""``fundwatch demo``: a simulated province through the live pipeline, end to end.

Starts the embedded broker (unless a cluster is configured) and a worker, streams
a synthetic province through Kafka at speed, prints each alert as it fires and a
live count, and ends with a summary that reconciles every input record.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from infra.config import Settings
from sinks.store import AlertStore
from streams.live import Watcher, produce, read_table_async, start_worker, stop_worker
from streams.records import Rejected, parse
from streams.watermark import event_ms, last_midnight, to_ms

SEVERITY_MARK = {"info": "·", "warning": "!", "critical": "‼"}


def _print_alert(alert: dict, previous: dict | None) -> None:
    if previous is not None and previous["severity"] == alert["severity"]:
        return  # same finding, more evidence: the store keeps it, the screen stays calm
    verb = "ALERT" if previous is None else "ESCALATED"
    print(f"  {SEVERITY_MARK[alert['severity']]} {verb:9} {alert['severity']:8} "
          f"{alert['rule_id']:22} {','.join(alert['regions'])}  {alert['summary']}",
          flush=True)


def run_demo(settings: Settings, days: int, seed: int, timeout_s: float, out_dir: Path,
             scale: float = 0.1) -> int:
    from streams.simulate import simulate, write

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sim = simulate(days=days, seed=seed, scale=scale)
    paths = write(sim, out_dir / "province.jsonl")
    print(f"simulated {days} days of a province: {len(sim.events):,} records "
          f"({paths['events']}; pool registry {paths['pools']})", flush=True)

    broker = None
    if settings.embedded_broker:
        from infra.broker import EmbeddedBroker

        broker = EmbeddedBroker(settings, log_path=out_dir / "broker.log").start()
        settings = settings.with_(bootstrap_servers=broker.bootstrap_servers)
        print(f"embedded broker (Tansu) on {broker.bootstrap_servers}", flush=True)
    else:
        from infra.broker import prepare_cluster

        prepare_cluster(settings)
        print(f"using the configured cluster {settings.bootstrap_servers}", flush=True)
    db_url = settings.db_url or f"sqlite:///{(out_dir / 'alerts.db').resolve()}"
    data_dir = out_dir / "worker-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.with_(db_url=db_url, data_dir=str(data_dir),
                              pools_path=settings.pools_path or str(paths["pools"]))
    worker = start_worker(settings, out_dir / "worker.log")
    print(f"worker started (pid {worker.pid}, log {out_dir / 'worker.log'})", flush=True)
    try:
        return asyncio.run(_stream(settings, sim, worker, timeout_s, started))
    finally:
        stop_worker(worker)
        if broker:
            broker.stop()


async def _stream(settings: Settings, sim, worker, timeout_s: float, started: float) -> int:
    watcher = Watcher(settings, on_alert=_print_alert)
    await watcher.start()
    total = len(sim.events)
    # The last midnight the stream's watermark will pass once everything is read:
    # the days (and months) before it are judged before the summary is drawn.
    closes = to_ms(last_midnight(newest_event_ms(sim.events)
                                 - settings.allowed_lateness_s * 1000))
    print("streaming settlements and contributions through Kafka ...", flush=True)
    producing = asyncio.create_task(produce(settings, sim.events))
    last_line = [0.0]

    def progress(o) -> None:
        now = time.monotonic()
        if now - last_line[0] >= 2.0:
            last_line[0] = now
            print(f"  … {o.accounted:>7,}/{total:,} records through · "
                  f"{o.count('accepted'):,} accepted · {o.count('duplicate'):,} duplicates · "
                  f"{len(o.rejected):,} dead-lettered · {len(o.alerts):,} alerts", flush=True)
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}; "
                               "see worker.log")

    # Done when every record is accounted for *and* the detect stage has caught up:
    # stages run at different speeds, and alerts come from the last one.
    def finished(o) -> bool:
        closed = o.closed_through(settings.partitions)
        return (producing.done() and o.settled(total) and closed is not None
                and closed >= closes)

    done = await watcher.until(finished, timeout_s, tick=progress)
    await producing
    # Let the alert sink catch up with the alerts topic before reading the store.
    store = AlertStore(settings.db_url)
    o = watcher.observed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and store.count() < len(o.alerts):
        await watcher.poll(500)
    await watcher.stop()
    books = await read_table_async(settings, "rule-state", prefix="pool_fund|")
    return _summary(settings, books, sim, o, store, total, done,
                    time.monotonic() - started)


def newest_event_ms(lines) -> int:
    newest = 0
    for raw in lines:
        try:
            newest = max(newest, event_ms(parse(raw)))
        except Rejected:
            continue  # the simulator's malformed records: no event time
    return newest


POOL_RULES = ("pool_balance_low", "pool_deficit", "pool_expenditure_surge")


def _pool_warnings(o) -> None:
    """The fund early warnings: which pools run short, and how fast."""
    pools = [a for a in o.alerts.values() if a["rule_id"] in POOL_RULES]
    if not pools:
        return
    print("pool warnings (基金预警)")
    rank = {"critical": 0, "warning": 1, "info": 2}
    for a in sorted(pools, key=lambda a: (rank[a["severity"]], a["rule_id"],
                                          a["subject"]["id"], a["window"]["start"])):
        if a["severity"] == "info":
            continue
        print(f"  {a['severity']:<8}  {a['summary']}")
        if len(a["regions"]) > 1:
            print(f"            provincial level: {', '.join(a['regions'])}")
    # Only the balance rule raises info alerts: idle money (结余过多), one line for all.
    surplus = sorted(a["subject"]["id"] for a in pools if a["severity"] == "info")
    if surplus:
        print(f"  info      excessive surplus (结余过多): {', '.join(surplus)}")


def _pools_table(settings: Settings, books: dict) -> None:
    """The pools as the deployment holds them now (``fundwatch pools``)."""
    from rules.registry import Registry
    from sinks.balances import books_in, pool_lines, render_pools, with_registry_pools

    registry = Registry.load(settings.pools_path) if settings.pools_path else None
    books = with_registry_pools(books_in(books), registry)
    print("pools now (fundwatch pools)")
    for line in render_pools(pool_lines(books, registry)):
        print("  " + line)


def _findings(o) -> None:
    """The joint reviews and the siphon findings, as the centers would read them."""
    _pool_warnings(o)
    joint = [a for a in o.alerts.values() if a.get("review") == "joint"]
    siphon = [a for a in o.alerts.values() if a["rule_id"] == "siphon_shift"]
    if joint:
        print("joint reviews (双地联查)")
        # Any rule may call a joint review; each alert's own summary says what it found.
        for a in sorted(joint, key=lambda a: (a["window"]["end"], a["rule_id"],
                                              a["subject"]["id"])):
            print(f"  {a['rule_id']}  {a['subject']['id']}  {a['severity']}  {a['summary']}")
            for region, duty in a["duties"].items():
                print(f"      {region}: {duty}")
    if siphon:
        print("siphon to the capital (虹吸效应)")
        for a in sorted(siphon, key=lambda a: (a["evidence"]["month"], a["subject"]["id"])):
            ev = a["evidence"]
            print(f"  {a['subject']['id']}  {a['severity']}  {ev['month']}: "
                  f"{ev['current_share']:.0%} of stays at {ev['capital_region']}'s tertiary "
                  f"hospitals vs {ev['baseline_share']:.0%} before; fund shifted "
                  f"¥{ev['fund_shifted']}")


def _summary(settings: Settings, books: dict, sim, o, store: AlertStore, total: int, done: bool,
             elapsed: float) -> int:
    reasons = o.reasons()
    by_rule = o.alerts_by_rule()
    truth_rules = Counter(t["anomaly"] for t in sim.truth if t.get("injected", True))
    print()
    print("── summary " + "─" * 60)
    print(f"events in            {total:>9,}")
    print(f"  processed          {o.count('accepted'):>9,}")
    print(f"  duplicates         {o.count('duplicate'):>9,}   (changed nothing)")
    print(f"  dead-lettered      {len(o.rejected):>9,}   (fundwatch.deadletter, with reasons)")
    for code, n in reasons.most_common():
        print(f"      {code:28} {n:>6,}")
    for rule, n in o.rule_failures().most_common():
        print(f"  rule failures      {n:>9,}   ({rule}; records processed, see dead letters)")
    unaccounted = total - o.accounted
    print(f"  unaccounted        {unaccounted:>9,}" + ("" if done else "   (timed out)"))
    print(f"alerts               {len(o.alerts):>9,}   ({o.alert_revisions:,} revisions)")
    for rule, n in sorted(by_rule.items()):
        injected = truth_rules.get(rule, 0)
        print(f"      {rule:28} {n:>6,}   (injected in the simulation: {injected})")
    uncovered = {a: n for a, n in truth_rules.items() if a not in by_rule
                 and a not in ("malformed", "duplicate", "conflicting_duplicate")}
    if uncovered:
        print("  injected, not alerted: " + ", ".join(f"{a} ({n})" for a, n in
                                                  sorted(uncovered.items())))
    _findings(o)
    _pools_table(settings, books)
    print(f"alert store          {store.url}  ({store.count():,} alerts)")
    print(f"elapsed              {elapsed:>9.1f} s")
    ok = done and unaccounted == 0 and store.count() == len(o.alerts)
    if not ok:
        print("demo FAILED: not every record was accounted for or stored", file=sys.stderr)
    return 0 if ok else 1
