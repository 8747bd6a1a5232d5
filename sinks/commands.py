"""``fundwatch alerts ...``: what a supervision center does with its alerts.

    fundwatch alerts list [--region R] [--rule ID] [--status S] [--severity S] [--json]
    fundwatch alerts show ID
    fundwatch alerts ack ID [--region R] [--note TEXT] [--by NAME]
    fundwatch alerts resolve ID --note TEXT [--region R] [--by NAME]
    fundwatch alerts dismiss ID --note TEXT [--region R] [--by NAME]
    fundwatch alerts import FILE
    fundwatch alerts deliver [--once] [--interval S]
    fundwatch alerts outbox

``--region`` is the center's own region (6 digits, or a province's 2-digit prefix);
on a joint review it selects the side the center may change, and no other. ``--by``
names who acts (default: ``$FUNDWATCH_USER``, else the login name); it goes into the
audit trail with the time and the note. Exit status: 0 done, 1 refused (unknown
alert, not the caller's side, a transition the lifecycle does not allow), 2 bad
usage or configuration.
"""
from __future__ import annotations

import getpass
import os
import sys
import threading
import time
from pathlib import Path

import orjson

from infra.config import Settings

STATUS_ORDER = ("open", "acknowledged", "resolved", "dismissed")


def add_parser(sub) -> None:
    p = sub.add_parser("alerts", help="supervision centers: list, acknowledge, resolve, "
                                      "dismiss alerts; deliver notifications")
    alerts = p.add_subparsers(dest="alerts_command", required=True)

    q = alerts.add_parser("list", help="alerts in the store, newest finding first")
    q.add_argument("--region", help="a center's region (6 digits) or province (2 digits): "
                                    "alerts naming it, and its sides' status")
    q.add_argument("--rule", dest="rule_id", metavar="ID", help="only this rule_id")
    q.add_argument("--status", choices=STATUS_ORDER,
                   help="only alerts with a side (of --region, if given) in this status")
    q.add_argument("--severity", choices=("info", "warning", "critical"))
    q.add_argument("--limit", type=int, help="at most this many")
    q.add_argument("--json", action="store_true",
                   help="one JSON object per line: {alert, sides}")

    q = alerts.add_parser("show", help="one alert, its sides and its history")
    q.add_argument("alert_id", metavar="ID")

    for action, text in (("ack", "acknowledge: the center has seen it and is on it"),
                         ("resolve", "close the center's side: acted on, with a note"),
                         ("dismiss", "close the center's side: not a problem, with a note")):
        q = alerts.add_parser(action, help=text)
        q.add_argument("alert_id", metavar="ID")
        q.add_argument("--region", help="the caller's region (6 digits, or a 2-digit province); "
                                        "required when the alert has several sides")
        q.add_argument("--note", required=action != "ack", default="",
                       help="what was found or done (required to resolve or dismiss)")
        q.add_argument("--by", help="who acts (default: $FUNDWATCH_USER or the login name)")

    q = alerts.add_parser("import", help="load alert/v1 JSON lines into the store, "
                                         "idempotently by alert_id")
    q.add_argument("file")

    q = alerts.add_parser("deliver", help="route stored alerts and send the notification "
                                          "outbox (workers do this too)")
    q.add_argument("--once", action="store_true", help="one pass, then exit")
    q.add_argument("--interval", type=float, default=1.0, help="seconds between passes")

    alerts.add_parser("outbox", help="notifications per channel: pending, sent, last error")


def run(args, settings: Settings) -> int:
    from sinks.store import AlertStore, LifecycleError

    command = args.alerts_command
    store = AlertStore(settings.alert_store_url())
    try:
        if command == "list":
            return _list(args, store)
        if command == "show":
            return _show(args, store, settings)
        if command in ("ack", "resolve", "dismiss"):
            return _transition(args, store, command)
        if command == "import":
            return _import(args, store)
        if command == "deliver":
            return _deliver(args, store, settings)
        if command == "outbox":
            return _outbox(store, settings)
    except LifecycleError as exc:
        print(f"fundwatch alerts {command}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"fundwatch alerts {command}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    raise AssertionError(f"unknown alerts command {command}")


def _statuses(sides: dict) -> str:
    return " ".join(f"{region}:{side['status']}" for region, side in sides.items())


def _list(args, store) -> int:
    rows = store.list_alerts(region=args.region, rule_id=args.rule_id, status=args.status,
                             severity=args.severity, limit=args.limit)
    out = sys.stdout
    for row in rows:
        if args.json:
            out.write(orjson.dumps(row).decode() + "\n")
            continue
        a = row["alert"]
        sides = row["sides"]
        if args.region:  # a center sees its own sides first
            sides = dict(sorted(sides.items(), key=lambda kv: not kv[0].startswith(args.region)))
        out.write(f"{a['alert_id']}  {a['severity']:<8} {a['rule_id']:<24} "
                  f"{a['subject']['kind']} {a['subject']['id']}  [{_statuses(sides)}]  "
                  f"{a['detected_at']}  {a['summary']}\n")
    if not args.json:
        print(f"# {len(rows)} alert(s)", file=sys.stderr)
    return 0


def _show(args, store, settings: Settings) -> int:
    from sinks.store import AlertNotFound

    alert = store.get(args.alert_id)
    if alert is None:
        raise AlertNotFound(f"no alert {args.alert_id}")
    print(orjson.dumps(alert, option=orjson.OPT_INDENT_2).decode())
    print("sides:")
    for region, side in store.sides(args.alert_id).items():
        closed = f" at {side['closed_severity']}" if side["closed_severity"] else ""
        print(f"  {region}  {side['status'] + closed:<21} (since {side['changed_at']} by "
              f"{side['changed_by']})  duty: {side['duty'] or '-'}")
    print("history:")
    for h in store.history(args.alert_id):
        print(f"  {h['at']}  {h['region'] or '-':6}  {h['action']:<8} "
              f"{h['from_status'] or '-'} → {h['to_status'] or '-'}  by {h['actor']}"
              + (f": {h['note']}" if h["note"] else ""))
    if settings.notify_secret:
        # For a center matching a notification's pseudonym to the person in the store.
        from sinks.privacy import Pseudonymizer, persons_in

        pseudonym = Pseudonymizer(settings.notify_secret)
        persons = sorted(persons_in(alert))
        if persons:
            print("pseudonyms in notifications:")
            for person in persons:
                print(f"  {pseudonym(person)}  {person}")
    return 0


def _actor(args) -> str:
    return args.by or os.environ.get("FUNDWATCH_USER") or getpass.getuser()


def _transition(args, store, action: str) -> int:
    changed = store.transition(args.alert_id, action, region=args.region, actor=_actor(args),
                               note=args.note)
    for region, status in changed.items():
        print(f"{args.alert_id} {region}: {status}")
    return 0


def _import(args, store) -> int:
    from sinks.store import alert_problems

    path = Path(args.file)
    if not path.exists():
        print(f"fundwatch alerts import: {path}: no such file", file=sys.stderr)
        return 2
    outcomes = {"inserted": 0, "updated": 0, "unchanged": 0}
    rejected = 0
    batch: list[dict] = []

    def flush() -> None:
        for outcome in store.upsert_many(batch):
            outcomes[outcome] += 1
        batch.clear()

    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                alert = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems = [f"not JSON ({exc})"]
            else:
                problems = alert_problems(alert)
            if problems:
                rejected += 1
                print(f"{number}\t{'; '.join(problems)}")
                continue
            batch.append(alert)
            if len(batch) >= 500:
                flush()
    flush()
    print(f"# {path}: {outcomes['inserted']} inserted, {outcomes['updated']} updated, "
          f"{outcomes['unchanged']} unchanged, {rejected} rejected", file=sys.stderr)
    return 1 if rejected else 0


def _deliver(args, store, settings: Settings) -> int:
    from sinks.notify import Dispatcher

    routing = settings.routing()
    if not routing.routes:
        print("fundwatch alerts deliver: no routes configured ([[notify.routes]] in the "
              "file named by FUNDWATCH_CONFIG)", file=sys.stderr)
        return 2
    dispatcher = Dispatcher(store, routing)
    if args.once:
        report = dispatcher.run_once()
        print(f"routed {report.alerts_routed} alert revision(s) into "
              f"{report.notifications_created} notification(s); sent "
              f"{report.notifications_sent} in {report.messages_sent} message(s) "
              f"({report.digests_sent} digests); {report.failed_attempts} failed attempt(s)"
              + (f"; {report.unserved} alert revision(s) in regions no route serves"
                 if report.unserved else ""))
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
        return 0
    stop = threading.Event()
    try:
        dispatcher.run(stop, interval_s=args.interval)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _outbox(store, settings: Settings) -> int:
    from sinks.notify import outbox_status

    routing = settings.routing() if settings.notify else None
    now = time.time() * 1000
    for row in outbox_status(store, routing):
        age = ("" if row["oldest_pending_ms"] is None else
               f", oldest pending {(now - row['oldest_pending_ms']) / 1000:.0f} s")
        print(f"{row['channel']}: {row['pending']} pending, {row['sent']} sent, "
              f"{row['superseded']} superseded{age}"
              + ("" if row["configured"] else " (no longer configured)")
              + (f"; last error: {row['last_error']}" if row["last_error"] else ""))
    return 0
