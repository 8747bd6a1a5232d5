"""``fundwatch demo``: a simulated province through the live pipeline, end to end.

Starts the embedded broker (unless a cluster is configured) and a worker, streams
a synthetic province through Kafka at speed, prints each alert as it fires and a
live count, and ends with a summary that reconciles every input record.

The worker stores its alerts; the demo plays the supervision centers too: it
starts a local JSON webhook (``sinks.webhook``) and delivers the stored alerts to
it through the notification outbox (``sinks.notify``) — Guangdong's route takes
warnings and worse for every ``44`` region, at most 5 messages per 10 s (a burst
becomes digests), Guangxi's route takes the insured side of the joint reviews — so
each notification is printed as it arrives, persons only as pseudonyms.
"""
from __future__ import annotations

import asyncio
import io
import secrets
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
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


class DemoCenters:
    """The demo's two supervision centers: routes to a local webhook, and a
    dispatcher delivering the store's alerts to it while the stream runs."""

    def __init__(self, settings: Settings) -> None:
        from sinks.webhook import WebhookReceiver

        # A fresh key per run unless one is configured: the demo's pseudonyms mean
        # nothing outside it.
        self.secret = settings.notify_secret or secrets.token_hex(16)
        self.hook = WebhookReceiver("/", on_message=self._arrived)
        self.example: dict | None = None
        self.stop_event = threading.Event()

    def _arrived(self, message: dict) -> None:
        if self.example is None and "joint (双地联查)" in message["message"] \
                and message["_path"] == "/guangxi":
            self.example = message
        print(f"  ✉ {message['_path'][1:]:<9} {message['title']}", flush=True)

    def start(self, db_url: str) -> "DemoCenters":
        from sinks.notify import Dispatcher, outbox_status
        from sinks.routing import Routing

        self.hook.start()
        self.routing = Routing.from_config({"retry_base_s": 1, "retry_max_s": 5, "routes": [
            {"name": "guangdong", "regions": ["44"], "min_severity": "warning",
             "urls": [self.hook.url_for("json", "/guangdong")], "max_messages": 5,
             "per_s": 10},
            {"name": "guangxi", "regions": ["45"],
             "urls": [self.hook.url_for("json", "/guangxi")]}]}, "demo", secret=self.secret)
        self.store = AlertStore(db_url)
        # A store named by FUNDWATCH_DB_URL is kept from run to run; what it had told
        # the centers before this run is not told again (see _notifications).
        self.told_before = sum(row["sent"] for row in outbox_status(self.store,
                                                                    self.routing))
        self.dispatcher = Dispatcher(self.store, self.routing)
        self.thread = threading.Thread(target=self.dispatcher.run, args=(self.stop_event, 0.5),
                                       name="demo-notify", daemon=True)
        self.thread.start()
        return self

    async def drain(self, timeout_s: float) -> int:
        """Wait until every stored alert is routed and every notification sent (a
        digest held by the rate limit goes when its window frees); the backlog left."""
        deadline = time.monotonic() + timeout_s
        backlog = self.dispatcher.backlog()
        while backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            backlog = self.dispatcher.backlog()
        return backlog

    def stop(self) -> None:
        self.stop_event.set()
        if getattr(self, "thread", None):
            self.thread.join(10)
        self.hook.stop()
        if getattr(self, "store", None):
            self.store.dispose()


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
    db_url = settings.db_url or fresh_demo_store(out_dir)
    data_dir = out_dir / "worker-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.with_(db_url=db_url, data_dir=str(data_dir),
                              pools_path=settings.pools_path or str(paths["pools"]))
    worker = start_worker(settings, out_dir / "worker.log")
    print(f"worker started (pid {worker.pid}, log {out_dir / 'worker.log'})", flush=True)
    centers = DemoCenters(settings)
    try:
        centers.start(db_url)
        print(f"supervision centers' webhook on http://127.0.0.1:{centers.hook.port} "
              "(routes: guangdong = 44*, warning and up, 5 messages per 10 s; guangxi = 45*)",
              flush=True)
        code, observed = asyncio.run(_stream(settings, sim, worker, timeout_s, started,
                                             centers))
    finally:
        centers.stop()
        stop_worker(worker)
        if broker:
            broker.stop()
    return _auditor_replay(settings, paths, out_dir, observed) or code


def fresh_demo_store(out_dir: Path) -> str:
    """The demo's own SQLite store (when no ``FUNDWATCH_DB_URL`` is given), emptied.
    Each run streams its province anew, and alert ids are stable: in a store kept
    from the run before, every alert would already be marked told (routing never
    tells a channel twice), and the second run's centers heard nothing.

    >>> import sqlite3, tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> sqlite3.connect(out / "alerts.db").execute("create table kept (x)").connection.commit()
    >>> url = fresh_demo_store(out)
    >>> url.endswith("/alerts.db"), (out / "alerts.db").exists()
    (True, False)
    """
    path = (out_dir / "alerts.db").resolve()
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def _auditor_replay(settings: Settings, paths: dict, out_dir: Path, o) -> int:
    """What an auditor gets from the same stream offline: the alerts (the same as the
    live worker's, which the store holds) and the report to hand on. 1 when the two
    disagree: an alert, a model's score, or a record let in after its day had closed
    (the live watermark ahead of its records)."""
    from importlib.metadata import version

    from rules.registry import Registry
    from sinks.balances import DailyBalances
    from sinks.report import Provenance, ReplayFacts, render_report
    from streams.replay import replay

    registry = Registry.load(settings.pools_path)
    result = replay([str(paths["events"])], settings, registry, close_input=False,
                    report=io.StringIO(), timeline=DailyBalances())
    live = {row["alert"]["alert_id"]: row["alert"]
            for row in AlertStore(settings.db_url).list_alerts()}
    offline = {a["alert_id"]: a for a in result.alerts}
    same = sum(1 for k, a in offline.items() if live.get(k) == a)
    report = out_dir / "report.html"
    command = (f"fundwatch replay {paths['events']} --pools {settings.pools_path} "
               f"--alerts-out ALERTS.jsonl --report {report} --live-watermark")
    report.write_text(render_report(ReplayFacts(
        result.pipeline, result.lines, result.alerts,
        Provenance(version("fundwatch"), command=command, inputs=result.inputs,
                   lateness_s=settings.allowed_lateness_s),
        registry, result.timeline)), encoding="utf-8")
    print(f"auditor's replay     {len(offline):>9,}   alerts offline (fundwatch replay); "
          f"{same:,} identical to the store's {len(live):,}, id and content")
    scores_same = _model_agreement(o.scores, result.pipeline.scores)
    print(f"  report             {report}  (open it in a browser)")
    live_late, replay_late = sum(o.late.values()), result.pipeline.counts["late"]
    print(f"late at detection    {live_late:>9,}   live, {replay_late:,} in the replay "
          "(copies that arrived after their day was closed)")
    if not (same == len(offline) == len(live) and scores_same and live_late == replay_late):
        print("demo FAILED: the live worker and the replay of its stream disagree",
              file=sys.stderr)
        return 1
    return 0


def _model_agreement(live: dict, replayed: list[dict]) -> bool:
    """Every score the model gave live against the replay's, with the place in its
    partition's sequence: the first difference says whether the order or the
    features differed."""
    offline = {s["settlement_id"]: s for s in replayed}
    same = sum(1 for sid, s in offline.items() if live.get(sid) == s)
    print(f"  model scores       {len(offline):>9,}   offline, {len(live):,} live; "
          f"{same:,} identical (score, partition, stays scored before)")
    differ = sorted((s["scored_before"]["phantom_bed"], s["partition"], sid)
                    for sid, s in offline.items() if live.get(sid) != s)
    if differ:
        _, _, sid = differ[0]
        print(f"      first difference: {sid} offline {offline[sid]} live {live.get(sid)}")
    return same == len(offline) == len(live)


async def _stream(settings: Settings, sim, worker, timeout_s: float, started: float,
                  centers: DemoCenters) -> int:
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
    backlog = await centers.drain(30)
    books = await read_table_async(settings, "rule-state", prefix="pool_fund|")
    books.update(await read_table_async(settings, "rule-state",
                                        prefix="management_overspend|"))
    return _summary(settings, books, sim, o, store, total, done,
                    time.monotonic() - started, centers, backlog), o


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


def _structural(settings: Settings, o, state: dict) -> None:
    """Management against structural risk: the pools spending above what their insured
    population explains, and each pool's standard expenditure (``fundwatch
    structural``), as the deployment holds them."""
    from rules.registry import Registry
    from sinks.structural import latest, render_structural, structural_rows

    found = sorted((a for a in o.alerts.values() if a["rule_id"] == "management_overspend"),
                   key=lambda a: (a["severity"] == "info", a["subject"]["id"],
                                  a["evidence"]["month"]))
    print("management overspend (管理风险)")
    for a in found:
        ev = a["evidence"]
        groups = ", ".join(f"{g['hmg']} ({'+' if not g['gap'].startswith('-') else ''}"
                           f"¥{g['gap']})" for g in ev["groups"])
        print(f"  {a['subject']['id']:<18} {a['severity']:<8} {ev['month']}: ¥{ev['actual']} "
              f"on {ev['cases']} stays against a standard of ¥{ev['nominal']} "
              f"(×{ev['ratio']:.2f}, z {ev['z']:+.1f}); groups: {groups}")
    if not found:
        print("  none")
    registry = Registry.load(settings.pools_path) if settings.pools_path else None
    rows = latest([r for r in structural_rows(state, registry) if r["province"] == "44"])
    if rows:
        print("structural risk: each pool's standard expenditure (fundwatch structural)")
        for line in render_structural(rows):
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
            for region, duty in (a.get("duties") or {}).items():
                print(f"      {region}: {duty}")
    if siphon:
        print("siphon to the capital (虹吸效应)")
        for a in sorted(siphon, key=lambda a: (a["evidence"]["month"], a["subject"]["id"])):
            ev = a["evidence"]
            print(f"  {a['subject']['id']}  {a['severity']}  {ev['month']}: "
                  f"{ev['current_share']:.0%} of stays at {ev['capital_region']}'s tertiary "
                  f"hospitals vs {ev['baseline_share']:.0%} before; fund shifted "
                  f"¥{ev['fund_shifted']}")


def _notifications(centers: DemoCenters, backlog: int) -> None:
    """What reached the centers, and one message as it left: persons as pseudonyms."""
    from sinks.notify import outbox_status

    messages = centers.hook.messages()
    digests = sum(1 for m in messages if "digest:" in m["title"])
    told = {}
    for row in outbox_status(centers.store, centers.routing):
        told[row["channel"]] = row
    print(f"notifications        {len(messages):>9,}   messages to the local webhook "
          f"({digests} digests), {backlog} left in the outbox")
    if centers.told_before:
        print("  the alert store named by FUNDWATCH_DB_URL was kept from an earlier run, whose "
              f"channels were told of {centers.told_before:,} alert"
              f"{'' if centers.told_before == 1 else 's'}: a channel is told of "
              "an alert once, so those it knew were not told again (without "
              "FUNDWATCH_DB_URL the demo starts a store of its own)")
    for channel, row in told.items():
        print(f"      {channel:28} {row['sent']:>6,}   alerts told"
              + (f", {row['pending']} pending" if row["pending"] else ""))
    if centers.example:
        print("  a joint review as the insured side's channel received it:")
        for line in (centers.example["title"] + "\n" + centers.example["message"]).splitlines():
            print("    │ " + line)


def _summary(settings: Settings, books: dict, sim, o, store: AlertStore, total: int, done: bool,
             elapsed: float, centers: DemoCenters | None = None, backlog: int = 0) -> int:
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
    # Planted cases are counted by subject (a pool planted low is one case however many
    # months the truth lists it), and a case counts as found when its subject alerted.
    planted: dict[str, set] = defaultdict(set)
    for t in sim.truth:
        if t.get("injected", True) and "subject" in t:
            planted[t["anomaly"]].add(t["subject"]["id"])
    for rule, n in sorted(by_rule.items()):
        alerted = {a["subject"]["id"] for a in o.alerts.values() if a["rule_id"] == rule}
        found = len(planted[rule] & alerted)
        print(f"      {rule:28} {n:>6,}   (planted in the simulation: {len(planted[rule])}, "
              f"{found} of them alerted)")
    uncovered = {a: n for a, n in truth_rules.items() if a not in by_rule
                 and a not in ("malformed", "duplicate", "conflicting_duplicate")}
    if uncovered:
        print("  injected, not alerted: " + ", ".join(f"{a} ({n})" for a, n in
                                                  sorted(uncovered.items())))
    _findings(o)
    _pools_table(settings, books)
    _structural(settings, o, books)
    print(f"alert store          {store.shown_url}  ({store.count():,} alerts)")
    if centers is not None:
        _notifications(centers, backlog)
    print(f"elapsed              {elapsed:>9.1f} s")
    ok = done and unaccounted == 0 and store.count() == len(o.alerts) and backlog == 0
    if not ok:
        print("demo FAILED: not every record was accounted for, stored or notified",
              file=sys.stderr)
    return 0 if ok else 1


# The inbox after the run (``fundwatch demo --serve``): the two sides of the demo's
# joint reviews (Maoming treats, Nanning insures) and an auditor.
DEMO_USERS = (("maoming", "440900", "center"), ("nanning", "450100", "center"),
              ("auditor", "44", "auditor"))


def serve_inbox(settings: Settings, out_dir: Path, host: str = "127.0.0.1",
                port: int = 8080) -> None:
    """Leave the supervision centers' inbox running on the demo's store, with fresh
    passwords for the demo logins, until Ctrl-C."""
    import uvicorn

    from sinks.access import Users
    from sinks.inbox import PoolSource, create_app

    db_url = settings.db_url or f"sqlite:///{(out_dir / 'alerts.db').resolve()}"
    store = AlertStore(db_url)
    users = Users(store)
    logins = []
    for name, region, role in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        if users.get(name) is None:
            users.add(name, region=region, role=role, password=password)
        else:
            users.set_password(name, password)
        logins.append((name, password, role, region))
    events = out_dir / "province.jsonl"
    registry = out_dir / "province.pools.yaml"
    pools = PoolSource(settings.with_(bootstrap_servers=None), files=[str(events)],
                       pools_path=str(registry) if registry.exists() else None)
    app = create_app(store, pseudonym_key=settings.notify_secret, pools=pools)
    print()
    print(f"── the supervision centers' inbox: http://{host}:{port}/  (Ctrl-C to stop)")
    for name, password, role, region in logins:
        print(f"   login {name:<8} password {password:<14} {role} of {region}")
    print("   (passwords are new for each run; `fundwatch users add` makes real users)",
          flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        store.dispose()
