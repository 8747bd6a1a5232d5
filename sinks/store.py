"""The alert store: every alert/v1 a worker emits, kept once by ``alert_id``, and what
the supervision centers do with it.

SQLAlchemy 2.x over SQLite (the default, a file) or PostgreSQL (by URL); the schema
is made and upgraded by the Alembic migrations in ``infra/migrations`` whenever a
store is opened (a database made before migrations existed is adopted as revision
0001). Writing is an idempotent upsert: a redelivered or replayed alert with the same
content changes nothing; the same ``alert_id`` with new content (an escalation, more
settlements) becomes the current revision and the previous one stays in
``alert_revisions``, so a center can see how a finding grew.

Each region an alert names is a **side** with its own status — open → acknowledged
→ resolved or dismissed — so the two sides of a joint review (双地联查) close their
parts independently. Every change of a side is a row in ``alert_audit`` (who, when,
from, to, note), which the database itself keeps append-only. An escalation (the
severity rises) reopens the sides that had closed, because the finding they closed
is no longer the finding there is.

>>> store = AlertStore("sqlite://")
>>> a = {"schema": "alert/v1", "alert_id": "fw-demo-1", "rule_id": "pool_deficit",
...      "severity": "warning", "subject": {"kind": "pool", "id": "440900:resident"},
...      "regions": ["440900"], "review": "single",
...      "window": {"start": "2025-03-01T00:00:00+08:00", "end": "2025-04-01T00:00:00+08:00"},
...      "detected_at": "2025-03-31T23:00:00+08:00", "summary": "deficit",
...      "evidence": {}, "settlement_ids": []}
>>> store.upsert(a), store.upsert(a), store.upsert({**a, "severity": "critical"})
('inserted', 'unchanged', 'updated')
>>> store.get("fw-demo-1")["severity"], store.revisions("fw-demo-1")
('critical', 2)
>>> store.transition("fw-demo-1", "ack", actor="li.wei", note="on it")
{'440900': 'acknowledged'}
>>> store.transition("fw-demo-1", "resolve", actor="li.wei", note="budget transfer approved")
{'440900': 'resolved'}
>>> for h in store.history("fw-demo-1"):
...     print(h["action"], h["to_status"], h["actor"])
opened open fundwatch
ack acknowledged li.wei
resolve resolved li.wei
"""
from __future__ import annotations

import re
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterable

import orjson
from sqlalchemy import (JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text,
                        create_engine, event, func, inspect, make_url, select, text)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from rules.alerts import SEVERITIES

MIGRATIONS = Path(__file__).resolve().parents[1] / "infra" / "migrations"
SYSTEM_ACTOR = "fundwatch"
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
STATUSES = ("open", "acknowledged", "resolved", "dismissed")
CLOSED = frozenset({"resolved", "dismissed"})
# What each command a center gives does to its side.
ACTIONS = {"ack": "acknowledged", "resolve": "resolved", "dismiss": "dismissed"}
SUBJECT_KINDS = ("pool", "institution", "person", "chain", "settlement")
_RULE_ID = re.compile(r"^[a-z][a-z0-9_]{2,63}$")
_REGION = re.compile(r"^[0-9]{6}$")
_REGION_OR_PROVINCE = re.compile(r"^([0-9]{2}|[0-9]{6})$")


class Base(DeclarativeBase):
    pass


class AlertRow(Base):
    __tablename__ = "alerts"

    alert_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16), index=True)
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    regions: Mapped[list] = mapped_column(JSON)
    review: Mapped[str] = mapped_column(String(8))
    window_start: Mapped[str] = mapped_column(String(40))
    window_end: Mapped[str] = mapped_column(String(40))
    detected_at: Mapped[str] = mapped_column(String(40), index=True)
    summary: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the alert/v1 JSON exactly as emitted
    revision: Mapped[int] = mapped_column(Integer, default=1)
    routed_revision: Mapped[int] = mapped_column(Integer, default=0)
    first_stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertRevision(Base):
    __tablename__ = "alert_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.alert_id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertSide(Base):
    """One region's part of an alert: its duty and how far the center has got."""
    __tablename__ = "alert_sides"

    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.alert_id"), primary_key=True)
    region: Mapped[str] = mapped_column(String(6), primary_key=True)
    duty: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[str] = mapped_column(String(40))
    changed_by: Mapped[str] = mapped_column(String(128))
    # The alert's severity when the side was closed (resolved or dismissed): it reopens
    # only on growing past what the center saw then. None while the side is not closed.
    closed_severity: Mapped[str | None] = mapped_column(String(16), nullable=True)


class AuditEntry(Base):
    __tablename__ = "alert_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.alert_id"), index=True)
    region: Mapped[str | None] = mapped_column(String(6), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text)
    at: Mapped[str] = mapped_column(String(40))


class Notification(Base):
    """The outbox: one row per (alert, channel, severity reached, sides) to be told."""
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.alert_id"), index=True)
    route: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(80))
    severity: Mapped[str] = mapped_column(String(16))
    regions: Mapped[list] = mapped_column(JSON)
    sides: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | superseded
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    lease_until_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ChannelState(Base):
    """A channel's run of failures: while it refuses, all its queue waits together."""
    __tablename__ = "notification_channels"

    channel: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    retry_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_success_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class InvalidAlert(ValueError):
    """A record that is not a usable alert/v1; the message lists every problem."""


class LifecycleError(Exception):
    """A center's command that cannot be carried out; ``http_status`` is what the web
    inbox answers (404: unknown or not yours to see, 409: not allowed from here)."""
    http_status = 400


class AlertNotFound(LifecycleError):
    http_status = 404


class NotYourSide(LifecycleError):
    http_status = 404


class SideRequired(LifecycleError):
    http_status = 400


class TransitionNotAllowed(LifecycleError):
    http_status = 409


def alert_problems(alert: Any) -> list[str]:
    """Everything that keeps a record from being stored as alert/v1 (empty: fine).

    >>> alert_problems({"schema": "alert/v1", "alert_id": "x"})[:2]
    ['alert_id must be a string of 8-64 characters', 'rule_id is missing']
    """
    if not isinstance(alert, dict):
        return [f"an alert must be a JSON object, not {type(alert).__name__}"]
    problems = []

    def need(key: str, kind: type, ok=lambda v: True, what: str = "") -> Any:
        value = alert.get(key)
        if value is None:
            problems.append(f"{key} is missing")
        elif not isinstance(value, kind) or not ok(value):
            problems.append(f"{key} {what or 'has the wrong type'}")
        return value

    if alert.get("schema") != "alert/v1":
        problems.append(f"schema must be 'alert/v1', not {alert.get('schema')!r}")
    need("alert_id", str, lambda v: 8 <= len(v) <= 64, "must be a string of 8-64 characters")
    need("rule_id", str, _RULE_ID.match, "must match ^[a-z][a-z0-9_]{2,63}$")
    need("severity", str, SEVERITY_RANK.__contains__, "must be info, warning or critical")
    subject = need("subject", dict, what="must be an object")
    if isinstance(subject, dict):
        if subject.get("kind") not in SUBJECT_KINDS:
            problems.append(f"subject.kind must be one of {', '.join(SUBJECT_KINDS)}")
        if not isinstance(subject.get("id"), str) or not 1 <= len(subject["id"]) <= 128:
            problems.append("subject.id must be a string of 1-128 characters")
    regions = need("regions", list, lambda v: v and all(isinstance(r, str) and _REGION.match(r)
                                                        for r in v) and len(set(v)) == len(v),
                   "must be a non-empty list of distinct 6-digit region codes")
    review = need("review", str, lambda v: v in ("single", "joint"), "must be single or joint")
    if review == "joint" and isinstance(regions, list) and len(regions) < 2:
        problems.append("a joint review must name the regions of both sides")
    duties = alert.get("duties")
    if duties is not None and (not isinstance(duties, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in duties.items())):
        problems.append("duties must map region codes to strings")
    window = need("window", dict, what="must be an object")
    if isinstance(window, dict) and not all(isinstance(window.get(k), str)
                                            and 10 <= len(window[k]) <= 40
                                            for k in ("start", "end")):
        problems.append("window needs start and end date-times")
    need("detected_at", str, lambda v: 10 <= len(v) <= 40, "must be a date-time string")
    need("summary", str, bool, "must be a non-empty string")
    need("evidence", dict, what="must be an object")
    need("settlement_ids", list, lambda v: all(isinstance(s, str) for s in v),
         "must be a list of strings")
    return problems


def _canonical(alert: dict[str, Any]) -> str:
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS).decode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_region(region: str) -> str:
    if not isinstance(region, str) or not _REGION_OR_PROVINCE.match(region):
        raise ValueError(f"region {region!r} must be a 6-digit region code or a 2-digit "
                         "province prefix")
    return region


# libpq: give up a connection attempt after 10 s; drop a connection whose sent data
# goes unacknowledged for 60 s, or that is idle and answers no keepalive probe
# (after 30 s, then every 10 s, 3 probes).
PG_TIMEOUTS = {"connect_timeout": 10, "tcp_user_timeout": 60_000, "keepalives": 1,
               "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


IN_MEMORY = ("sqlite://", "sqlite:///:memory:")


def store_engine(url: str):
    """The SQLAlchemy engine for a store at ``url``."""
    if url in IN_MEMORY:
        # An in-memory database exists once per connection: every thread (the
        # dispatcher's senders) must share the one connection to see the same store.
        return create_engine(url, poolclass=StaticPool,
                             connect_args={"check_same_thread": False})
    if url.startswith("postgresql"):
        # A database host that stops answering (no refusal, no reset) must come back
        # as an error the sink logs and retries, not as a call that waits for ever
        # with the alerts behind it: libpq's own timeouts, unless the URL sets them.
        given = make_url(url).query
        return create_engine(url, connect_args={k: v for k, v in PG_TIMEOUTS.items()
                                                if k not in given})
    return create_engine(url)


def shown_url(url: str) -> str:
    """A store's URL as a screen or a log may show it: without its password.

    >>> shown_url("postgresql+psycopg://fundwatch:s3cret@db:5432/fundwatch")
    'postgresql+psycopg://fundwatch:***@db:5432/fundwatch'
    >>> shown_url("sqlite:////srv/fundwatch/alerts.db")
    'sqlite:////srv/fundwatch/alerts.db'
    """
    return make_url(url).render_as_string(hide_password=True)


class AlertStore:
    """The alerts, their sides' statuses and audit trail, and the notification outbox."""

    def __init__(self, url: str) -> None:
        self.url = url
        # For screens and logs: a PostgreSQL URL may carry the password.
        self.shown_url = shown_url(url)
        memory = url in IN_MEMORY
        self.engine = store_engine(url)
        if self.engine.dialect.name == "sqlite":

            # Several processes (worker, demo, CLI) share the file: wait for locks
            # instead of failing, and let readers proceed while a worker writes.
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _record):
                # Take transactions into our own hands (SQLAlchemy's pysqlite recipe):
                # the driver would otherwise run DDL outside any transaction, and a
                # read-then-write (a status change) could lose a race.
                conn.isolation_level = None
                cur = conn.cursor()
                cur.execute("PRAGMA busy_timeout = 30000")
                cur.execute("PRAGMA foreign_keys = ON")
                if not memory:
                    cur.execute("PRAGMA journal_mode = WAL")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _begin(conn):
                # IMMEDIATE takes the write lock up front: two writers queue on
                # busy_timeout instead of deadlocking when both upgrade a read lock.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        upgrade_schema(self.engine)

    # ── alerts ────────────────────────────────────────────────────────────────

    def upsert(self, alert: dict[str, Any]) -> str:
        return self.upsert_many([alert])[0]

    def upsert_many(self, alerts: Iterable[dict[str, Any]]) -> list[str]:
        """Store alerts idempotently in one transaction; per alert: inserted / updated /
        unchanged. Safe against another writer inserting the same id concurrently.
        Raises ``InvalidAlert`` (before writing anything) if any record is not alert/v1."""
        alerts = list(alerts)
        for alert in alerts:
            problems = alert_problems(alert)
            if problems:
                name = alert.get("alert_id") if isinstance(alert, dict) else None
                raise InvalidAlert(f"alert {name!r}: " + "; ".join(problems))
        for attempt in range(3):
            try:
                with Session(self.engine) as session, session.begin():
                    return [self._upsert_one(session, a) for a in alerts]
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _upsert_one(self, session: Session, alert: dict[str, Any]) -> str:
        now = datetime.now(UTC)
        body = _canonical(alert)
        row = session.get(AlertRow, alert["alert_id"])
        if row is None:
            session.add(AlertRow(
                alert_id=alert["alert_id"], body=body, revision=1, routed_revision=0,
                first_stored_at=now, last_stored_at=now, **_columns(alert)))
            session.flush()
            session.add(AlertRevision(alert_id=alert["alert_id"], revision=1,
                                      severity=alert["severity"], body=body, stored_at=now))
            self._sync_sides(session, alert)
            return "inserted"
        if row.body == body:
            return "unchanged"
        before = row.severity
        row.revision += 1
        row.body = body
        row.last_stored_at = now
        for key, value in _columns(alert).items():
            setattr(row, key, value)
        session.add(AlertRevision(alert_id=row.alert_id, revision=row.revision,
                                  severity=alert["severity"], body=body, stored_at=now))
        self._sync_sides(session, alert,
                         rose=SEVERITY_RANK[alert["severity"]] > SEVERITY_RANK[before])
        return "updated"

    def _sync_sides(self, session: Session, alert: dict, rose: bool = False) -> None:
        """Open the sides of regions new to the alert; when its severity ``rose``, reopen
        a closed side if the alert is now more severe than it was when that side was
        closed. Judged against the severity at the close, not the revision before: a
        stream processed again into this store (offsets reset, state rebuilt) brings an
        alert's old revisions back in order, warning and then critical, and a side
        resolved at critical must stay so."""
        at = now_iso()
        duties = alert.get("duties") or {}
        query = select(AlertSide).where(AlertSide.alert_id == alert["alert_id"])
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()  # a center's change must not cross a reopening
        sides = {s.region: s for s in session.scalars(query)}
        for region in alert["regions"]:
            side = sides.get(region)
            if side is None:
                session.add(AlertSide(alert_id=alert["alert_id"], region=region,
                                      duty=duties.get(region), status="open", changed_at=at,
                                      changed_by=SYSTEM_ACTOR))
                session.add(AuditEntry(alert_id=alert["alert_id"], region=region,
                                       action="opened", from_status=None, to_status="open",
                                       actor=SYSTEM_ACTOR, note=duties.get(region) or "",
                                       at=at))
                continue
            side.duty = duties.get(region, side.duty)
            if not rose or side.status not in CLOSED:
                continue
            if SEVERITY_RANK[alert["severity"]] > SEVERITY_RANK[side.closed_severity]:
                session.add(AuditEntry(
                    alert_id=alert["alert_id"], region=region, action="reopened",
                    from_status=side.status, to_status="open", actor=SYSTEM_ACTOR,
                    note=f"escalated from {side.closed_severity} to {alert['severity']}",
                    at=at))
                side.status, side.changed_at, side.changed_by = "open", at, SYSTEM_ACTOR
                side.closed_severity = None

    def get(self, alert_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(AlertRow, alert_id)
            return orjson.loads(row.body) if row else None

    def all(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(AlertRow.body).order_by(AlertRow.alert_id))
            return [orjson.loads(b) for b in rows]

    def count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(AlertRow))

    def revisions(self, alert_id: str) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(AlertRevision)
                                  .where(AlertRevision.alert_id == alert_id))

    # ── the centers' lifecycle ────────────────────────────────────────────────

    def sides(self, alert_id: str) -> dict[str, dict[str, Any]]:
        """Region → {status, duty, changed_at, changed_by, closed_severity}."""
        with Session(self.engine) as session:
            return {s.region: _side_dict(s) for s in session.scalars(
                select(AlertSide).where(AlertSide.alert_id == alert_id)
                .order_by(AlertSide.region))}

    def transition(self, alert_id: str, action: str, *, actor: str, note: str = "",
                   region: str | None = None) -> dict[str, str]:
        """Apply a center's ``ack`` / ``resolve`` / ``dismiss`` to its side(s) of an alert
        and record it; returns region → new status for the sides changed.

        ``region`` (a 6-digit code, or a province's 2-digit prefix) selects the sides
        the caller speaks for; without it the alert must have a single side. A repeat
        (acknowledging what is acknowledged) changes nothing and records nothing; a
        closed side cannot be acknowledged or closed otherwise. All the selected sides
        change, or none."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if action in ("resolve", "dismiss") and not (note or "").strip():
            raise ValueError(f"{action} needs a note saying what was found or why")
        if not actor or not actor.strip():
            raise ValueError("the actor (who makes the change) must be named")
        if region is not None:
            check_region(region)
        target = ACTIONS[action]
        with Session(self.engine) as session, session.begin():
            if session.get(AlertRow, alert_id) is None:
                raise AlertNotFound(f"no alert {alert_id}")
            query = select(AlertSide).where(AlertSide.alert_id == alert_id)
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update()  # two centers' clicks must not interleave
            sides = list(session.scalars(query.order_by(AlertSide.region)))
            if region is None:
                if len(sides) != 1:
                    raise SideRequired(
                        f"alert {alert_id} has {len(sides)} sides "
                        f"({', '.join(s.region for s in sides)}): name yours with --region")
                mine = sides
            else:
                mine = [s for s in sides if s.region.startswith(region)]
                if not mine:
                    raise NotYourSide(f"alert {alert_id} has no side in region {region} "
                                      f"(its sides: {', '.join(s.region for s in sides)})")
            for side in mine:
                if side.status != target and side.status in CLOSED:
                    raise TransitionNotAllowed(
                        f"alert {alert_id}, side {side.region}: cannot {action} what is "
                        f"already {side.status}")
            at = now_iso()
            # Read under the sides' lock: an escalation stored meanwhile is what is closed.
            severity = session.scalar(select(AlertRow.severity)
                                      .where(AlertRow.alert_id == alert_id))
            result = {}
            for side in mine:
                result[side.region] = target
                if side.status == target:
                    continue  # a repeated command changes nothing
                session.add(AuditEntry(alert_id=alert_id, region=side.region, action=action,
                                       from_status=side.status, to_status=target,
                                       actor=actor.strip(), note=(note or "").strip(), at=at))
                side.status, side.changed_at, side.changed_by = target, at, actor.strip()
                side.closed_severity = severity if target in CLOSED else None
            return result

    def history(self, alert_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            return [{"at": e.at, "region": e.region, "action": e.action,
                     "from_status": e.from_status, "to_status": e.to_status,
                     "actor": e.actor, "note": e.note}
                    for e in session.scalars(select(AuditEntry)
                                             .where(AuditEntry.alert_id == alert_id)
                                             .order_by(AuditEntry.id))]

    def list_alerts(self, region: str | None = None, rule_id: str | None = None,
                    status: str | None = None, severity: str | None = None,
                    limit: int | None = None) -> list[dict[str, Any]]:
        """Alerts a center sees — one of its ``regions`` starts with ``region`` — newest
        finding first, each as ``{"alert": alert/v1, "sides": {region: {...}}}``.
        ``status`` keeps alerts where a side of the caller's (all sides without
        ``region``) has that status."""
        if region is not None:
            check_region(region)
        if status is not None and status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if severity is not None and severity not in SEVERITY_RANK:
            raise ValueError(f"severity {severity!r} is not one of info, warning, critical")
        query = select(AlertRow.alert_id, AlertRow.body)
        if region is not None or status is not None:
            sides = select(AlertSide.alert_id)
            if region is not None:
                sides = sides.where(AlertSide.region.startswith(region, autoescape=True))
            if status is not None:
                sides = sides.where(AlertSide.status == status)
            query = query.where(AlertRow.alert_id.in_(sides))
        if rule_id is not None:
            query = query.where(AlertRow.rule_id == rule_id)
        if severity is not None:
            query = query.where(AlertRow.severity == severity)
        query = query.order_by(AlertRow.detected_at.desc(), AlertRow.alert_id)
        if limit is not None:
            query = query.limit(limit)
        with Session(self.engine) as session:
            rows = list(session.execute(query))
            by_alert: dict[str, dict] = {}
            ids = [r.alert_id for r in rows]
            for chunk in range(0, len(ids), 500):
                for side in session.scalars(select(AlertSide).where(
                        AlertSide.alert_id.in_(ids[chunk:chunk + 500]))
                        .order_by(AlertSide.region)):
                    by_alert.setdefault(side.alert_id, {})[side.region] = _side_dict(side)
        return [{"alert": orjson.loads(r.body), "sides": by_alert.get(r.alert_id, {})}
                for r in rows]

    def dispose(self) -> None:
        self.engine.dispose()


def _side_dict(side: AlertSide) -> dict[str, Any]:
    return {"status": side.status, "duty": side.duty, "changed_at": side.changed_at,
            "changed_by": side.changed_by, "closed_severity": side.closed_severity}


def _columns(alert: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule_id": alert["rule_id"], "severity": alert["severity"],
        "subject_kind": alert["subject"]["kind"], "subject_id": alert["subject"]["id"],
        "regions": list(alert["regions"]), "review": alert["review"],
        "window_start": alert["window"]["start"], "window_end": alert["window"]["end"],
        "detected_at": alert["detected_at"], "summary": alert["summary"],
    }


# ── schema migrations ────────────────────────────────────────────────────────

_SCRIPTS = None


def _alembic_config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def schema_head() -> str:
    """The newest migration's revision id."""
    global _SCRIPTS
    if _SCRIPTS is None:
        from alembic.script import ScriptDirectory

        _SCRIPTS = ScriptDirectory.from_config(_alembic_config())
    return _SCRIPTS.get_current_head()


def schema_revision(engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine) -> None:
    """Bring the database to the newest migration, once, however many processes open
    it at the same moment: the upgrade runs inside one transaction that holds a lock
    (SQLite: the write lock of BEGIN IMMEDIATE; PostgreSQL: an advisory lock, and its
    DDL is transactional), and the others find it done when they get the lock."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    head = schema_head()
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": zlib.crc32(b"fundwatch.alert_store")})
                current = MigrationContext.configure(conn).get_current_revision()
                if current == head:
                    return
                config = _alembic_config(conn)
                if current is None and inspect(conn).has_table("alerts"):
                    # Made by create_all before migrations existed: exactly 0001.
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
                return
        except OperationalError:
            # SQLite: "database is locked" past busy_timeout while another process
            # migrates a large file. Try again rather than fail a worker's start.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
