"""The alert store: every alert/v1 a worker emits, kept once by ``alert_id``.

SQLAlchemy 2.x over SQLite (the default, a file) or PostgreSQL (by URL). Writing is
an idempotent upsert: a redelivered or replayed alert with the same content
changes nothing; the same ``alert_id`` with new content (an escalation, more
settlements) becomes the current revision and the previous one stays in
``alert_revisions``, so a center can see how a finding grew.

>>> store = AlertStore("sqlite://")
>>> a = {"schema": "alert/v1", "alert_id": "fw-1", "rule_id": "pool_deficit",
...      "severity": "warning", "subject": {"kind": "pool", "id": "440900:resident"},
...      "regions": ["440900"], "review": "single",
...      "window": {"start": "2025-03-01T00:00:00+08:00", "end": "2025-04-01T00:00:00+08:00"},
...      "detected_at": "2025-03-31T23:00:00+08:00", "summary": "deficit",
...      "evidence": {}, "settlement_ids": []}
>>> store.upsert(a), store.upsert(a), store.upsert({**a, "severity": "critical"})
('inserted', 'unchanged', 'updated')
>>> store.get("fw-1")["severity"], store.revisions("fw-1")
('critical', 2)
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Iterable

import orjson
from sqlalchemy import (JSON, DateTime, ForeignKey, Integer, String, Text, create_engine,
                        event, func, select)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


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


def _canonical(alert: dict[str, Any]) -> str:
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS).decode()


class AlertStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            # Several processes (worker, demo, CLI) share the file: wait for locks
            # instead of failing, and let readers proceed while a worker writes.
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _record):
                cur = conn.cursor()
                cur.execute("PRAGMA busy_timeout = 30000")
                if url not in ("sqlite://", "sqlite:///:memory:"):
                    cur.execute("PRAGMA journal_mode = WAL")
                cur.close()
        self._create_schema()

    def _create_schema(self) -> None:
        # Several workers start at once against one database: both may see the
        # table missing and one CREATE then fails. Checking again settles it.
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def upsert(self, alert: dict[str, Any]) -> str:
        return self.upsert_many([alert])[0]

    def upsert_many(self, alerts: Iterable[dict[str, Any]]) -> list[str]:
        """Store alerts idempotently in one transaction; per alert: inserted / updated /
        unchanged. Safe against another writer inserting the same id concurrently."""
        alerts = list(alerts)
        for attempt in range(3):
            try:
                with Session(self.engine) as session, session.begin():
                    return [self._upsert_one(session, a) for a in alerts]
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _upsert_one(self, session: Session, alert: dict[str, Any]) -> str:
        now = datetime.now(timezone.utc)
        body = _canonical(alert)
        row = session.get(AlertRow, alert["alert_id"])
        if row is None:
            session.add(AlertRow(
                alert_id=alert["alert_id"], body=body, revision=1, first_stored_at=now,
                last_stored_at=now, **_columns(alert)))
            session.flush()
            session.add(AlertRevision(alert_id=alert["alert_id"], revision=1,
                                      severity=alert["severity"], body=body, stored_at=now))
            return "inserted"
        if row.body == body:
            return "unchanged"
        row.revision += 1
        row.body = body
        row.last_stored_at = now
        for key, value in _columns(alert).items():
            setattr(row, key, value)
        session.add(AlertRevision(alert_id=row.alert_id, revision=row.revision,
                                  severity=alert["severity"], body=body, stored_at=now))
        return "updated"

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

    def dispose(self) -> None:
        self.engine.dispose()


def _columns(alert: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule_id": alert["rule_id"], "severity": alert["severity"],
        "subject_kind": alert["subject"]["kind"], "subject_id": alert["subject"]["id"],
        "regions": list(alert["regions"]), "review": alert["review"],
        "window_start": alert["window"]["start"], "window_end": alert["window"]["end"],
        "detected_at": alert["detected_at"], "summary": alert["summary"],
    }
