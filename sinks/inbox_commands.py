"""``fundwatch serve`` and ``fundwatch users ...``: the supervision centers' inbox.

    fundwatch serve [--host 127.0.0.1] [--port 8080] [--replay FILE... --pools POOLS]
    fundwatch users add NAME --region R [--role center|auditor] [--password-stdin]
    fundwatch users list
    fundwatch users token NAME

``users add`` prints the user's API token once, on its last line (only its hash is
kept). With ``--password-stdin`` the password is the first line of standard input;
without it a terminal is asked twice, and anywhere else the user gets no password
(API only). Exit status: 0 done, 1 refused (the user exists, no such user), 2 bad
usage.
"""
from __future__ import annotations

import getpass
import sys

from infra.config import Settings


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="the supervision centers' web inbox and its JSON API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--replay", nargs="+", default=[], metavar="FILE",
                   help="show the pools of these files, replayed (without a deployment "
                        "to read them from)")
    p.add_argument("--pools", help="the pool registry (default: FUNDWATCH_POOLS_PATH)")
    p.add_argument("--https-only", action="store_true",
                   help="session cookies only over HTTPS (behind a TLS proxy)")

    p = sub.add_parser("users", help="who may use the inbox: add, list, token")
    users = p.add_subparsers(dest="users_command", required=True)
    q = users.add_parser("add", help="a user bound to a region; prints an API token once")
    q.add_argument("name")
    q.add_argument("--region", required=True,
                   help="6-digit region code, or a 2-digit province prefix")
    q.add_argument("--role", choices=("center", "auditor"), default="center")
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    users.add_parser("list", help="every user: name, role, region")
    q = users.add_parser("token", help="issue another API token for a user (printed once)")
    q.add_argument("name")


def serve(args, settings: Settings) -> int:
    import uvicorn

    from sinks.access import Users
    from sinks.inbox import PoolSource, create_app
    from sinks.store import AlertStore

    store = AlertStore(settings.alert_store_url())
    pools = PoolSource(settings, files=args.replay, pools_path=args.pools)
    app = create_app(store, pseudonym_key=settings.notify_secret, pools=pools,
                     https_only=args.https_only)
    if not Users(store).count():
        print("no users yet: add one with `fundwatch users add NAME --region R "
              "--password-stdin`", file=sys.stderr)
    print(f"inbox on http://{args.host}:{args.port}/ (alert store {store.shown_url})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        store.dispose()
    return 0


def users(args, settings: Settings) -> int:
    from sinks.access import UserExists, Users
    from sinks.store import AlertStore

    store = AlertStore(settings.alert_store_url())
    try:
        book = Users(store)
        command = args.users_command
        if command == "list":
            for user in book.all():
                print(f"{user.name}\t{user.role}\t{user.region}")
            return 0
        if command == "token":
            try:
                print(book.new_token(args.name))
            except KeyError:
                print(f"fundwatch users token: no user {args.name!r}", file=sys.stderr)
                return 1
            return 0
        password = _password(args)
        try:
            token = book.add(args.name, region=args.region, role=args.role, password=password)
        except UserExists as exc:
            print(f"fundwatch users add: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"fundwatch users add: {exc}", file=sys.stderr)
            return 2
        print(f"user {args.name}: {args.role} of region {args.region}"
              + ("" if password else " (no password: API token only)"))
        print("API token (shown once, keep it):", file=sys.stderr)
        print(token)
        return 0
    finally:
        store.dispose()


def _password(args) -> str | None:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        return line or None
    if sys.stdin.isatty():
        first = getpass.getpass("password (empty: API token only): ")
        if first and getpass.getpass("again: ") != first:
            raise SystemExit("fundwatch users add: the passwords differ")
        return first or None
    return None
