"""Measures notification delivery: routing and sending rate to a local webhook, and how
fast a channel that was down gets its backlog once it is back.

    python bench/delivery.py [--alerts 2000] [--channels 1] [--db URL]
        [--outage-s 20]

Prints one line per measurement and, last, one JSON line with the figures. Real
parts throughout: the store (SQLite file by default, or the URL given), Apprise's
``json://`` plugin, a loopback HTTP server (``sinks.webhook``), wall-clock time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.alerts import make_alert, month_window  # noqa: E402
from sinks.notify import Dispatcher  # noqa: E402
from sinks.routing import Routing  # noqa: E402
from sinks.store import AlertStore  # noqa: E402
from sinks.webhook import WebhookReceiver  # noqa: E402


def _alerts(n: int, offset: int = 0, tag: str = "") -> list[dict]:
    # The tag keeps each run's alerts apart when --db points at a database kept
    # between runs (a known alert_id would be "unchanged" and notify nobody).
    tag = tag or f"{time.time_ns()}"
    return [make_alert("pool_deficit", "warning", "pool", f"440900:bench-{tag}-{offset + i}",
                       regions=["440900"], window=month_window("2025-03"),
                       detected_at="2025-04-01T00:00:00+08:00", summary=f"bench {offset + i}",
                       evidence={"deficit": "1000.00"}) for i in range(n)]


def _routing(hook: WebhookReceiver, channels: int, **notify) -> Routing:
    urls = [hook.url_for("json", f"/c{i}") for i in range(channels)]
    return Routing.from_config({"routes": [{"name": "bench", "regions": ["44"], "urls": urls}],
                                **notify}, "bench", secret="bench-key-0123456789")


def throughput(db_url: str, n: int, channels: int) -> dict:
    with WebhookReceiver("/") as hook:
        store = AlertStore(db_url)
        dispatcher = Dispatcher(store, _routing(hook, channels))
        dispatcher.run_once()  # whatever an earlier run left in a kept database
        t0 = time.perf_counter()
        store.upsert_many(_alerts(n))
        t1 = time.perf_counter()
        routed = dispatcher.route_new_alerts()
        t2 = time.perf_counter()
        while dispatcher.backlog():
            dispatcher.deliver_due()
        t3 = time.perf_counter()
        received = sum(1 for m in hook.messages() if "bench " in m["message"])
        store.dispose()
    assert received == n * channels and routed.notifications_created == n * channels
    return {"alerts": n, "channels": channels, "store_alerts_per_s": round(n / (t1 - t0)),
            "route_notifications_per_s": round(n * channels / (t2 - t1)),
            "deliver_messages_per_s": round(received / (t3 - t2))}


def outage(db_url: str, n: int, outage_s: float) -> dict:
    """A channel refuses (503) for ``outage_s`` while ``n`` alerts arrive; a
    dispatcher runs its usual loop (1 s passes); then the channel is back."""
    with WebhookReceiver("/") as hook:
        store = AlertStore(db_url)
        routing = _routing(hook, 1, retry_base_s=1, retry_max_s=5)
        dispatcher = Dispatcher(store, routing)
        stop = threading.Event()
        loop = threading.Thread(target=dispatcher.run, args=(stop, 1.0), daemon=True)
        hook.refusing = True
        loop.start()
        started = time.monotonic()
        tag = f"outage-{time.time_ns()}"
        for i in range(10):  # alerts keep arriving during the outage
            store.upsert_many(_alerts(n // 10, offset=i * (n // 10), tag=tag))
            time.sleep(outage_s / 10)
        hook.refusing = False
        back = time.monotonic()
        while len(hook.messages()) < n and time.monotonic() - back < 120:
            time.sleep(0.05)
        done = time.monotonic()
        stop.set()
        loop.join(10)
        ids = [m["message"].split("notification: ")[1].split(" ")[0] for m in hook.messages()]
        store.dispose()
    assert len(ids) == n and len(set(ids)) == n, (len(ids), len(set(ids)))
    return {"outage_s": round(back - started, 1), "refused_requests": hook.refused,
            "backlog": n, "drained_s_after_back": round(done - back, 2),
            "duplicates": len(ids) - len(set(ids))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/delivery.py")
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--db", help="store URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--outage-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        def url(name: str) -> str:
            return args.db or f"sqlite:///{Path(tmp) / name}"

        figures = {"throughput": throughput(url("t.db"), args.alerts, args.channels)}
        print(f"throughput: {figures['throughput']}", flush=True)
        figures["outage"] = outage(url("o.db"), min(args.alerts, 500), args.outage_s)
        print(f"outage: {figures['outage']}", flush=True)
    print(orjson.dumps(figures).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
