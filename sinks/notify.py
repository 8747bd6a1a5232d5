"""Notifications to the supervision centers: routed from the store, sent from an outbox.

Two steps, both restartable at any point without losing or doubling anything:

1. **Route** (:meth:`Dispatcher.route_new_alerts`): every alert revision not yet
   routed is matched against the routes (``sinks.routing``); each (alert, channel,
   severity reached, sides) becomes one ``notifications`` row — the unique key makes a
   redelivered alert, a replay or a second dispatcher add nothing — and the
   alert's ``routed_revision`` moves on, in the same transaction. More evidence at
   the same severity tells nobody again, nor does a lower one; an escalation tells
   every channel once more; a region added to a joint review is told for the first
   time.
2. **Deliver** (:meth:`Dispatcher.deliver_due`): due rows are leased (so several
   dispatchers — every worker runs one — never send the same row), sent through
   Apprise, and marked sent right after their send. A failed send is retried
   with backoff (``retry_base_s`` doubling to ``retry_max_s``) for as long as it
   takes: a channel down for an hour gets everything when it comes back. A
   channel over its ``max_messages`` per ``per_s`` gets the overflow folded into
   digests.

The one gap no outbox closes: a dispatcher killed after a channel accepted a
message but before it was marked sent sends that message again when its lease
runs out. Each message therefore names its notification ids (``n-17``), so a
receiver can drop a repeat.

>>> from sinks.webhook import WebhookReceiver
>>> center = WebhookReceiver("/fundwatch").start()  # a center's JSON webhook, on loopback
>>> from sinks.routing import Routing
>>> routing = Routing.from_config({"routes": [{"name": "maoming", "regions": ["440900"],
...     "urls": [center.apprise_url]}]}, "example",
...     secret="example-key-0123456789")
>>> from sinks.store import AlertStore
>>> store = AlertStore("sqlite://")
>>> _ = store.upsert({"schema": "alert/v1", "alert_id": "fw-example1", "rule_id": "pool_deficit",
...     "severity": "warning", "subject": {"kind": "pool", "id": "440900:resident"},
...     "regions": ["440900"], "review": "single",
...     "window": {"start": "2025-03-01T00:00:00+08:00", "end": "2025-04-01T00:00:00+08:00"},
...     "detected_at": "2025-04-01T00:00:00+08:00", "summary": "March deficit",
...     "evidence": {}, "settlement_ids": []})
>>> dispatcher = Dispatcher(store, routing)
>>> report = dispatcher.run_once()
>>> report.notifications_created, report.messages_sent, dispatcher.run_once().messages_sent
(1, 1, 0)
>>> center.messages()[0]["title"]
'[fundwatch] WARNING pool_deficit · pool 440900:resident'
>>> center.stop()
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sinks.privacy import Pseudonymizer, notification_view
from sinks.routing import SEVERITY_RANK, Route, Routing
from sinks.store import AlertRow, AlertStore, ChannelState, Notification

log = logging.getLogger("fundwatch.notify")

MAX_ERROR_CHARS = 500
CLAIM_LIMIT = 2000  # notifications one pass takes at most (the rest wait for the next)
ROUTE_BATCH = 500
LEASE_MARGIN_S = 30.0  # longer than one send may take (Apprise's timeouts are seconds)


class Sender(Protocol):
    def send(self, url: str, title: str, body: str, severity: str) -> tuple[bool, str | None]:
        """Deliver one message; (accepted, why not)."""


class AppriseSender:
    """Sends through Apprise: one plugin per URL scheme, so a new kind of channel is a
    new URL in the config and nothing else."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _apprise(self, url: str):
        import apprise

        cache = self._local.__dict__.setdefault("by_url", {})
        if url not in cache:
            client = apprise.Apprise()
            if not client.add(url):
                return None
            cache[url] = client
        return cache[url]

    def send(self, url: str, title: str, body: str, severity: str) -> tuple[bool, str | None]:
        import apprise

        client = self._apprise(url)
        if client is None:
            return False, "Apprise does not accept this URL"
        kind = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
                "critical": apprise.NotifyType.FAILURE}[severity]
        with apprise.LogCapture(level=logging.WARNING) as captured:
            ok = client.notify(body=body, title=title, notify_type=kind,
                               body_format=apprise.NotifyFormat.TEXT)
        if ok:
            return True, None
        # Apprise logs why (its URLs in those lines are already masked); keep the
        # messages, not the log lines' timestamps.
        why = "; ".join(line.rsplit(" - ", 1)[-1].strip()
                        for line in captured.getvalue().splitlines() if line.strip())
        return False, (why or "Apprise reported a failure")[-MAX_ERROR_CHARS:]


@dataclass
class DeliveryReport:
    alerts_routed: int = 0
    unserved: int = 0  # alert revisions naming no region any route serves
    notifications_created: int = 0
    messages_sent: int = 0
    notifications_sent: int = 0
    digests_sent: int = 0
    failed_attempts: int = 0
    superseded: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: "DeliveryReport") -> None:
        for name in ("alerts_routed", "unserved", "notifications_created", "messages_sent",
                     "notifications_sent", "digests_sent", "failed_attempts", "superseded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)


@dataclass(frozen=True)
class _Item:
    id: int
    alert_id: str
    channel: str
    severity: str
    regions: tuple[str, ...]
    attempts: int
    lease_until_ms: int


class Dispatcher:
    """Routes stored alerts into the outbox and delivers the outbox."""

    def __init__(self, store: AlertStore, routing: Routing, sender: Sender | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if routing.routes and not routing.secret:
            raise ValueError("routes need a pseudonym key (FUNDWATCH_NOTIFY_SECRET)")
        self.store = store
        self.routing = routing
        self.sender = sender or AppriseSender()
        self.clock = clock
        self.pseudonym = Pseudonymizer(routing.secret) if routing.secret else None
        self._pg = store.engine.dialect.name == "postgresql"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ── step 1: route ─────────────────────────────────────────────────────────

    def route_new_alerts(self, limit: int = ROUTE_BATCH) -> DeliveryReport:
        """Turn every stored alert revision not yet routed into outbox rows."""
        report = DeliveryReport()
        while True:
            routed, created, unserved = self._route_batch(limit)
            report.alerts_routed += routed
            report.notifications_created += created
            report.unserved += unserved
            if routed < limit:
                return report

    def _route_batch(self, limit: int) -> tuple[int, int, int]:
        now = self._now_ms()
        with Session(self.store.engine) as session, session.begin():
            query = (select(AlertRow).where(AlertRow.routed_revision < AlertRow.revision)
                     .order_by(AlertRow.detected_at, AlertRow.alert_id).limit(limit))
            if self._pg:
                # Another dispatcher routing the same alerts skips them, not waits.
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query))
            if not rows:
                return 0, 0, 0
            told: dict[tuple, set] = defaultdict(set)  # (alert, channel, severity) → sides
            for alert_id, channel, severity, regions in session.execute(
                    select(Notification.alert_id, Notification.channel, Notification.severity,
                           Notification.regions)
                    .where(Notification.alert_id.in_([r.alert_id for r in rows]))):
                told[(alert_id, channel, severity)].update(regions)
            created = unserved = 0
            for row in rows:
                alert = orjson.loads(row.body)
                if self.routing.routes and not any(
                        route.serves(r) for route in self.routing.routes for r in alert["regions"]):
                    # Stored and listed, but no center hears of it: say so, loudly.
                    unserved += 1
                    log.warning("alert %s names regions %s that no route serves: it is in the "
                                "store, no notification goes out", row.alert_id,
                                ",".join(alert["regions"]))
                rank = SEVERITY_RANK[alert["severity"]]
                for recipient in self.routing.recipients(alert):
                    # Only sides this channel has not been told about at this severity
                    # or a higher one: a region added to a joint review is told, once;
                    # a lower severity is no news to those told of a higher one — nor
                    # is an alert's old revision, when a stream processed again brings
                    # it back (warning, then critical) into this store.
                    heard = set().union(*(told[(row.alert_id, recipient.channel, severity)]
                                          for severity, r in SEVERITY_RANK.items()
                                          if r >= rank))
                    sides = sorted(set(recipient.sides) - heard)
                    if not sides:
                        continue
                    told[(row.alert_id, recipient.channel, alert["severity"])].update(sides)
                    session.add(Notification(
                        alert_id=row.alert_id, route=recipient.route.name,
                        channel=recipient.channel, severity=alert["severity"],
                        regions=sides, sides=",".join(sides), status="pending", attempts=0,
                        created_ms=now, next_attempt_ms=now))
                    created += 1
                row.routed_revision = row.revision
            return len(rows), created, unserved

    # ── step 2: deliver ───────────────────────────────────────────────────────

    def deliver_due(self) -> DeliveryReport:
        """Send what is due on every channel (channels in parallel, each in order)."""
        items = self._claim()
        report = DeliveryReport()
        by_channel: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_channel[item.channel].append(item)
        if not by_channel:
            return report
        if len(by_channel) == 1:
            (channel, mine), = by_channel.items()
            report.add(self._deliver_channel(channel, mine))
            return report
        with ThreadPoolExecutor(min(8, len(by_channel))) as pool:
            for result in pool.map(lambda kv: self._deliver_channel(*kv), by_channel.items()):
                report.add(result)
        return report

    def run_once(self) -> DeliveryReport:
        report = self.route_new_alerts()
        report.add(self.deliver_due())
        return report

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Route and deliver until ``stop`` is set; a failing database or channel is
        logged and tried again, never fatal (the outbox keeps the work)."""
        while not stop.is_set():
            try:
                report = self.run_once()
                if report.messages_sent or report.failed_attempts:
                    log.info("notifications: %d sent in %d messages, %d failed attempts",
                             report.notifications_sent, report.messages_sent,
                             report.failed_attempts)
            except Exception:  # noqa: BLE001 - the loop must outlive a database outage
                log.exception("notification pass failed; trying again")
            stop.wait(interval_s)

    def _claim(self) -> list[_Item]:
        channels = [c for route in self.routing.routes for c, _ in route.channels()]
        now = self._now_ms()
        with Session(self.store.engine) as session, session.begin():
            backing_off = set(session.scalars(select(ChannelState.channel).where(
                ChannelState.retry_at_ms > now)))
            channels = [c for c in channels if c not in backing_off]
            if not channels:
                return []
            query = (select(Notification)
                     .where(Notification.status == "pending",
                            Notification.channel.in_(channels),
                            Notification.next_attempt_ms <= now,
                            or_(Notification.lease_until_ms.is_(None),
                                Notification.lease_until_ms < now))
                     .order_by(Notification.id).limit(CLAIM_LIMIT))
            if self._pg:
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query))
            lease = now + int(self.routing.lease_s * 1000)
            for row in rows:
                row.lease_until_ms = lease
            return [_Item(r.id, r.alert_id, r.channel, r.severity, tuple(r.regions),
                          r.attempts, lease) for r in rows]

    def _deliver_channel(self, channel: str, items: list[_Item]) -> DeliveryReport:
        report = DeliveryReport()
        route, url = self.routing.channel(channel)
        # One alert that reached several severities while queued: send the highest;
        # a lower one is superseded only if the higher one tells all of its sides.
        best: dict[str, _Item] = {}
        superseded: dict[str, list[int]] = defaultdict(list)
        queue = []
        for item in sorted(items, key=lambda i: (i.alert_id, -SEVERITY_RANK[i.severity], i.id)):
            top = best.get(item.alert_id)
            if top is None:
                best[item.alert_id] = item
                queue.append(item)
            elif set(item.regions) <= set(top.regions):
                superseded[item.alert_id].append(item.id)
            else:
                queue.append(item)
        queue.sort(key=lambda i: (-SEVERITY_RANK[i.severity], i.id))
        now = self._now_ms()
        slots, slot_free_ms = self._slots(route, channel, now)
        if slots <= 0:
            self._release([i.id for i in items], next_attempt_ms=slot_free_ms)
            return report
        if len(queue) <= slots:
            messages = [[item] for item in queue]
        else:
            size = route.digest_size
            messages = [queue[i:i + size] for i in range(0, len(queue), size)][:slots]
        alerts = self._alerts({i.alert_id for m in messages for i in m})
        done: set[int] = set()
        # Stop sending while the lease has time left for one more send: past it,
        # another dispatcher may take these rows over and send them too.
        send_until = min(i.lease_until_ms for i in items) - int(LEASE_MARGIN_S * 1000)
        for message in messages:
            if self._now_ms() > send_until:
                break
            title, body = _render_safely(message, alerts, route, self.pseudonym)
            ok, error = self.sender.send(url, title, body, max(
                (i.severity for i in message), key=SEVERITY_RANK.__getitem__))
            ids = [i.id for i in message]
            dropped = [s for i in message if best.get(i.alert_id) is i
                       for s in superseded.get(i.alert_id, ())]
            if ok:
                self._mark_sent(ids, dropped, channel)
                report.messages_sent += 1
                report.notifications_sent += len(ids)
                report.digests_sent += len(message) > 1
                report.superseded += len(dropped)
                done.update(ids, dropped)
                continue
            failures, retry_ms = self._mark_failed(ids, error, channel)
            done.update(ids)
            report.failed_attempts += 1
            report.errors.append(f"{channel}: {error}")
            log.warning("channel %s refused %d notification(s) (failure %d in a row): %s; "
                        "retry in %.0f s", channel, len(ids), failures, error,
                        (retry_ms - self._now_ms()) / 1000)
            # The channel is down: the rest of its queue waits for the same retry
            # instead of each being refused in turn.
            self._release([i.id for i in items if i.id not in done], next_attempt_ms=retry_ms)
            return report
        rest = [i.id for i in items if i.id not in done]
        if rest:  # over the rate limit (wait for a slot), or out of lease time (go on)
            over_limit = len(messages) >= slots
            self._release(rest, next_attempt_ms=max(slot_free_ms, now + 1) if over_limit
                          else now)
        return report

    def _slots(self, route: Route, channel: str, now: int) -> tuple[float, int]:
        """Messages the channel may take now, and when the next slot frees."""
        if route.max_messages is None:
            return float("inf"), now
        since = now - int(route.per_s * 1000)
        with Session(self.store.engine) as session:
            rows = list(session.execute(
                select(Notification.message_id, func.min(Notification.sent_ms))
                .where(Notification.channel == channel, Notification.status == "sent",
                       Notification.sent_ms > since)
                .group_by(Notification.message_id)))
        slots = route.max_messages - len(rows)
        oldest = min((sent for _, sent in rows), default=now)
        return slots, oldest + int(route.per_s * 1000) + 1

    def _alerts(self, alert_ids: set[str]) -> dict[str, dict]:
        with Session(self.store.engine) as session:
            return {r.alert_id: orjson.loads(r.body) for r in session.execute(
                select(AlertRow.alert_id, AlertRow.body)
                .where(AlertRow.alert_id.in_(sorted(alert_ids))))}

    def _mark_sent(self, ids: list[int], superseded: list[int], channel: str) -> None:
        now = self._now_ms()
        message_id = uuid.uuid4().hex[:16]
        with Session(self.store.engine) as session, session.begin():
            state = session.get(ChannelState, channel)
            if state is not None and (state.failures or state.retry_at_ms):
                state.failures, state.retry_at_ms, state.last_success_ms = 0, 0, now
            session.execute(update(Notification).where(Notification.id.in_(ids)).values(
                status="sent", sent_ms=now, message_id=message_id, lease_until_ms=None,
                attempts=Notification.attempts + 1, last_error=None))
            if superseded:
                session.execute(update(Notification).where(Notification.id.in_(superseded))
                                .values(status="superseded", message_id=message_id,
                                        lease_until_ms=None))

    def _mark_failed(self, ids: list[int], error: str | None, channel: str) -> tuple[int, int]:
        """Count the failure against the channel; returns (failures in a row, retry at)."""
        for attempt in range(3):
            try:
                with Session(self.store.engine) as session, session.begin():
                    state = session.get(ChannelState, channel, with_for_update=self._pg)
                    if state is None:
                        state = ChannelState(channel=channel, failures=0, retry_at_ms=0)
                        session.add(state)
                    state.failures += 1
                    state.last_error = error
                    state.retry_at_ms = self._now_ms() + int(
                        self.routing.backoff_s(state.failures) * 1000)
                    session.execute(update(Notification).where(Notification.id.in_(ids))
                                    .values(attempts=Notification.attempts + 1,
                                            last_error=error, lease_until_ms=None,
                                            next_attempt_ms=state.retry_at_ms))
                    return state.failures, state.retry_at_ms
            except IntegrityError:  # another dispatcher made the row first
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _release(self, ids: list[int], next_attempt_ms: int) -> None:
        if not ids:
            return
        with Session(self.store.engine) as session, session.begin():
            session.execute(update(Notification).where(Notification.id.in_(ids)).values(
                lease_until_ms=None, next_attempt_ms=next_attempt_ms))

    # ── what the outbox holds ─────────────────────────────────────────────────

    def backlog(self) -> int:
        """Alert revisions not yet routed plus notifications not yet sent on the
        configured channels: 0 when everyone has been told everything."""
        channels = [c for route in self.routing.routes for c, _ in route.channels()]
        with Session(self.store.engine) as session:
            unrouted = session.scalar(select(func.count()).select_from(AlertRow).where(
                AlertRow.routed_revision < AlertRow.revision))
            pending = session.scalar(select(func.count()).select_from(Notification).where(
                Notification.status == "pending", Notification.channel.in_(channels)))
        return unrouted + pending

    def outbox(self) -> list[dict[str, Any]]:
        """Per channel: pending, sent, superseded, oldest pending (ms), last error."""
        return outbox_status(self.store, self.routing)


def outbox_status(store: AlertStore, routing: Routing | None = None) -> list[dict[str, Any]]:
    configured = {c for route in (routing.routes if routing else ())
                  for c, _ in route.channels()}
    with Session(store.engine) as session:
        counts = defaultdict(dict)
        for channel, status, n in session.execute(
                select(Notification.channel, Notification.status, func.count())
                .group_by(Notification.channel, Notification.status)):
            counts[channel][status] = n
        oldest = dict(session.execute(
            select(Notification.channel, func.min(Notification.created_ms))
            .where(Notification.status == "pending").group_by(Notification.channel)).all())
        errors = {}
        for channel, error in session.execute(
                select(Notification.channel, Notification.last_error)
                .where(Notification.status == "pending", Notification.last_error.is_not(None))
                .order_by(Notification.id)):
            errors[channel] = error
    return [{"channel": c, "configured": c in configured,
             "pending": counts[c].get("pending", 0), "sent": counts[c].get("sent", 0),
             "superseded": counts[c].get("superseded", 0),
             "oldest_pending_ms": oldest.get(c), "last_error": errors.get(c)}
            for c in sorted(set(counts) | configured)]


# ── the messages ──────────────────────────────────────────────────────────────

def _persons_for(view: dict, sides: tuple[str, ...]) -> list[str]:
    regions = view["person_regions"]
    if regions:
        return sorted(p for p, r in regions.items() if r in sides or r is None)[:10]
    return view["persons"]


def render(alert: dict, item: _Item, route: Route,
           pseudonym: Callable[[str], str]) -> tuple[str, str]:
    """Title and text of one alert's notification to one route's sides."""
    view = notification_view(alert, pseudonym)
    sides = item.regions
    subject = view["subject"]
    title = (f"[fundwatch] {view['severity'].upper()} {view['rule_id']} · "
             f"{subject['kind']} {subject['id']}")
    review = "joint (双地联查)" if view["review"] == "joint" else "single"
    lines = [view["summary"], "",
             f"severity: {view['severity']} · rule: {view['rule_id']} · review: {review}",
             (f"window: {view['window']['start']} – {view['window']['end']} · "
              f"detected {view['detected_at']}")]
    lines.append("your part:" if len(sides) == 1 else "your parts:")
    for region in sides:
        lines.append(f"  {region}: {view['duties'].get(region) or 'review and act'}")
    others = [r for r in view["regions"] if r not in sides]
    if others:
        lines.append("other side(s): " + ", ".join(
            f"{r} ({view['duties'][r]})" if r in view["duties"] else r for r in others))
    if view["figures"]:
        lines.append("figures: " + ", ".join(f"{k}={v}" for k, v in view["figures"].items()))
    persons = _persons_for(view, sides)
    if persons:
        more = view["person_count"] - len(persons)
        lines.append("persons (pseudonyms): " + ", ".join(persons)
                     + (f" (+{more} more in the alert)" if more > 0 else ""))
    lines.append(f"settlements: {view['settlement_count']} (ids in the alert store)")
    lines.append(f"alert: {view['alert_id']} — fundwatch alerts show {view['alert_id']}")
    lines.append(f"notification: n-{item.id} (route {route.name})")
    return title, "\n".join(lines)


def _render_safely(message: list[_Item], alerts: dict[str, dict], route: Route,
                   pseudonym: Callable[[str], str]) -> tuple[str, str]:
    """A notification that cannot be rendered (an alert shaped in a way this code did
    not foresee) must not block its channel: it goes out plain, naming only ids."""
    try:
        if len(message) == 1:
            return render(alerts[message[0].alert_id], message[0], route, pseudonym)
        return render_digest([(alerts[i.alert_id], i) for i in message], route, pseudonym)
    except Exception:  # noqa: BLE001
        log.exception("rendering notifications %s failed; sending them plain",
                      [i.id for i in message])
        lines = [f"- {i.severity.upper()} alert {i.alert_id} for {', '.join(i.regions)} · "
                 f"n-{i.id}" for i in message]
        return (f"[fundwatch] {len(message)} alert(s) · route {route.name}",
                "Open in the alert store (fundwatch alerts show ID):\n" + "\n".join(lines))


def render_digest(entries: list[tuple[dict, _Item]], route: Route,
                  pseudonym: Callable[[str], str]) -> tuple[str, str]:
    """One message for many alerts, when a channel is at its rate limit."""
    counts = defaultdict(int)
    for alert, _ in entries:
        counts[alert["severity"]] += 1
    breakdown = ", ".join(f"{counts[s]} {s}" for s in ("critical", "warning", "info")
                          if counts[s])
    title = f"[fundwatch] digest: {len(entries)} alerts ({breakdown}) · route {route.name}"
    lines = [(f"{len(entries)} alerts for {', '.join(route.regions)} arrived faster than "
              f"this channel's limit ({route.max_messages} messages per {route.per_s:.0f} s); "
              "each is in the alert store:"), ""]
    for alert, item in entries:
        view = notification_view(alert, pseudonym)
        duty = "; ".join(f"{r}: {view['duties'][r]}" for r in item.regions
                         if r in view["duties"])
        summary = view["summary"] if len(view["summary"]) <= 200 else view["summary"][:199] + "…"
        lines.append(f"- {view['severity'].upper()} {view['rule_id']} {view['subject']['kind']} "
                     f"{view['subject']['id']} · {summary}"
                     + (f" · your part: {duty}" if duty else "")
                     + f" · alert {view['alert_id']} · n-{item.id}")
    return title, "\n".join(lines)
