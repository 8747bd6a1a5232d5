"""The alert store, on real SQLite and real PostgreSQL."""
from __future__ import annotations

import copy

import pytest

from rules.alerts import make_alert, month_window
from sinks.store import (AlertNotFound, AlertStore, InvalidAlert, NotYourSide, SideRequired,
                         TransitionNotAllowed, _canonical, alert_problems, schema_head,
                         schema_revision)


def _alert(count: int, severity: str = "warning") -> dict:
    return make_alert("unfiled_cross_region", severity, "institution", "H440100001",
                      regions=["440100"], window=month_window("2025-03"),
                      detected_at="2025-03-09T10:00:00+08:00",
                      summary=f"{count} unfiled stays", evidence={"settlement_count": count},
                      settlement_ids=[f"S{i}" for i in range(count)])


def test_upsert_is_idempotent_and_keeps_history(store):
    first = _alert(5)
    assert store.upsert(first) == "inserted"
    # A redelivered alert — same content, even as a different dict object — is a no-op.
    assert store.upsert(copy.deepcopy(first)) == "unchanged"
    assert store.count() == 1 and store.revisions(first["alert_id"]) == 1

    grown = _alert(21, "critical")
    assert grown["alert_id"] == first["alert_id"]
    assert store.upsert(grown) == "updated"
    assert store.count() == 1
    assert store.get(first["alert_id"]) == grown
    assert store.revisions(first["alert_id"]) == 2


def test_batch_with_repeats_in_it(store):
    a, b = _alert(5), _alert(6)
    assert store.upsert_many([a, a, b]) == ["inserted", "unchanged", "updated"]
    assert store.all() == [b]


def test_many_stores_created_at_once(tmp_path):
    """Workers start together against one database; creating the schema races."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'race.db'}"
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: AlertStore(url), range(8)))
    assert all(s.count() == 0 for s in stores)


def _joint() -> dict:
    return make_alert("cross_province_surge", "warning", "institution", "H440900001",
                      regions=["440900", "450100"], window=month_window("2025-05"),
                      detected_at="2025-05-20T00:00:00+08:00", summary="surge",
                      evidence={}, review="joint",
                      duties={"440900": "On-site inspection", "450100": "Verify enrolment"})


def test_joint_review_sides_close_separately_and_only_by_their_region(store):
    alert = _joint()
    store.upsert(alert)
    aid = alert["alert_id"]
    assert {r: s["status"] for r, s in store.sides(aid).items()} == {
        "440900": "open", "450100": "open"}
    assert store.sides(aid)["450100"]["duty"] == "Verify enrolment"

    # A joint review cannot be changed without saying whose side.
    with pytest.raises(SideRequired, match="name yours with --region"):
        store.transition(aid, "ack", actor="someone")
    # A center outside the review changes nothing.
    with pytest.raises(NotYourSide, match="no side in region 330100"):
        store.transition(aid, "ack", region="330100", actor="hangzhou")

    assert store.transition(aid, "ack", region="450100", actor="gx.wang") == {
        "450100": "acknowledged"}
    assert store.transition(aid, "resolve", region="45", actor="gx.wang",
                            note="enrolment genuine for 17 of 18; 1 referred") == {
        "450100": "resolved"}
    sides = store.sides(aid)
    assert (sides["440900"]["status"], sides["450100"]["status"]) == ("open", "resolved")
    assert sides["450100"]["changed_by"] == "gx.wang"

    # The other side acts on its own part, later.
    store.transition(aid, "dismiss", region="440900", actor="mm.li",
                     note="care matched the records on site")
    history = store.history(aid)
    assert [(h["region"], h["action"], h["from_status"], h["to_status"], h["actor"])
            for h in history] == [
        ("440900", "opened", None, "open", "fundwatch"),
        ("450100", "opened", None, "open", "fundwatch"),
        ("450100", "ack", "open", "acknowledged", "gx.wang"),
        ("450100", "resolve", "acknowledged", "resolved", "gx.wang"),
        ("440900", "dismiss", "open", "dismissed", "mm.li")]
    assert history[3]["note"] == "enrolment genuine for 17 of 18; 1 referred"
    assert all(h["at"].endswith("+00:00") for h in history)


def test_lifecycle_rules(store):
    alert = _alert(5)
    store.upsert(alert)
    aid = alert["alert_id"]
    with pytest.raises(ValueError, match="resolve needs a note"):
        store.transition(aid, "resolve", actor="li")
    with pytest.raises(AlertNotFound):
        store.transition("fw-000000000000", "ack", actor="li")
    with pytest.raises(ValueError, match="unknown action 'close'"):
        store.transition(aid, "close", actor="li")
    assert store.transition(aid, "ack", actor="li") == {"440100": "acknowledged"}
    store.transition(aid, "ack", actor="li")  # a repeat: nothing changes, nothing recorded
    assert len(store.history(aid)) == 2
    store.transition(aid, "dismiss", actor="li", note="known seasonal pattern")
    with pytest.raises(TransitionNotAllowed, match="cannot ack what is already dismissed"):
        store.transition(aid, "ack", actor="li")
    with pytest.raises(TransitionNotAllowed):
        store.transition(aid, "resolve", actor="li", note="x")
    assert store.sides(aid)["440100"]["status"] == "dismissed"

    # The finding escalates: the dismissed side is open again, and the audit says why.
    store.upsert(_alert(21, "critical"))
    assert store.sides(aid)["440100"]["status"] == "open"
    assert store.history(aid)[-1]["note"] == "escalated from warning to critical"
    # More evidence at the same severity reopens nothing.
    store.transition(aid, "resolve", actor="li", note="institution sanctioned")
    store.upsert(_alert(22, "critical"))
    assert store.sides(aid)["440100"]["status"] == "resolved"


def test_a_stream_processed_again_reopens_nothing_a_center_closed(store):
    # Offsets reset, state rebuilt: the workers emit an alert's revisions again, in
    # order. The store took the old warning as a downgrade and the old critical after
    # it as an escalation, and reopened the side the center had resolved.
    warning, critical = _alert(5), _alert(21, "critical")
    aid = warning["alert_id"]
    store.upsert(warning)
    store.upsert(critical)
    store.transition(aid, "resolve", actor="li", note="institution sanctioned")
    closed = len(store.history(aid))
    assert store.sides(aid)["440100"]["closed_severity"] == "critical"
    for again in (warning, critical):
        store.upsert(again)
    assert store.sides(aid)["440100"]["status"] == "resolved"
    assert len(store.history(aid)) == closed  # no "reopened" entry
    assert store.get(aid) == critical

    # More evidence below what the center closed reopens nothing either; a finding
    # that grows past it does: closed at warning, after a downgrade, then critical.
    store.upsert(_alert(8))
    assert store.sides(aid)["440100"]["status"] == "resolved"
    store.upsert(_alert(22, "critical"))
    assert store.sides(aid)["440100"]["status"] == "resolved"
    other = {**_alert(21, "critical"), "alert_id": "fw-other-finding"}
    store.upsert(other)
    store.upsert({**_alert(9), "alert_id": "fw-other-finding"})
    store.transition("fw-other-finding", "dismiss", actor="li", note="filings found")
    store.upsert({**_alert(25, "critical"), "alert_id": "fw-other-finding"})
    assert store.sides("fw-other-finding")["440100"]["status"] == "open"
    assert store.history("fw-other-finding")[-1]["note"] == "escalated from warning to critical"


def test_a_close_and_an_escalation_in_one_millisecond(store, monkeypatch):
    """The severity a side was closed at is kept on the side, not read back from store
    times: with every time the store writes the same instant (a fast machine puts a
    close and the next revision in one millisecond), a side dismissed at warning still
    reopens at critical, and one resolved at critical still stays closed."""
    import sinks.store as store_module

    instant = store_module.datetime(2026, 12, 7, 16, 0, tzinfo=store_module.UTC)

    class Frozen(store_module.datetime):
        @classmethod
        def now(cls, tz=None):
            return instant

    monkeypatch.setattr(store_module, "datetime", Frozen)
    aid = _alert(5)["alert_id"]
    store.upsert(_alert(21, "critical"))
    store.upsert(_alert(9))
    store.transition(aid, "dismiss", actor="li", note="filings found")
    store.upsert(_alert(25, "critical"))
    assert store.sides(aid)["440100"]["status"] == "open"
    assert store.sides(aid)["440100"]["closed_severity"] is None
    assert store.history(aid)[-1]["note"] == "escalated from warning to critical"
    assert {e["at"] for e in store.history(aid)} == {"2026-12-07T16:00:00.000+00:00"}

    store.transition(aid, "resolve", actor="li", note="institution sanctioned")
    store.upsert(_alert(9))
    store.upsert(_alert(26, "critical"))
    assert store.sides(aid)["440100"]["status"] == "resolved"


def test_audit_is_append_only_in_the_database(store):
    import sqlalchemy as sa

    store.upsert(_alert(5))
    for statement in ("UPDATE alert_audit SET actor = 'someone else'", "DELETE FROM alert_audit"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(sa.text(statement))
    assert len(store.history(_alert(5)["alert_id"])) == 1


def test_list_filters_by_region_prefix_rule_and_side_status(store):
    joint, single = _joint(), _alert(5)
    store.upsert_many([joint, single])
    store.transition(joint["alert_id"], "ack", region="450100", actor="gx")

    def ids(**kw):
        return [row["alert"]["alert_id"] for row in store.list_alerts(**kw)]

    assert ids() == [joint["alert_id"], single["alert_id"]]  # newest finding first
    assert ids(region="44") == [joint["alert_id"], single["alert_id"]]
    assert ids(region="440100") == [single["alert_id"]]
    assert ids(region="45", status="acknowledged") == [joint["alert_id"]]
    assert ids(region="440900", status="acknowledged") == []
    assert ids(rule_id="unfiled_cross_region") == [single["alert_id"]]
    assert ids(status="open") == [joint["alert_id"], single["alert_id"]]
    row = store.list_alerts(region="45")[0]
    assert row["sides"]["450100"]["status"] == "acknowledged"
    with pytest.raises(ValueError, match="6-digit region code or a 2-digit"):
        store.list_alerts(region="4509")
    with pytest.raises(ValueError, match="status 'closed' is not one of"):
        store.list_alerts(status="closed")


def test_bad_records_are_refused_with_every_reason_and_nothing_written(store):
    good = _alert(5)
    bad = {**_joint(), "regions": ["440900"], "severity": "urgent"}
    with pytest.raises(InvalidAlert, match="severity must be info, warning or critical; .*"
                                           "a joint review must name the regions of both"):
        store.upsert_many([good, bad])
    assert store.count() == 0
    assert alert_problems("not an object") == ["an alert must be a JSON object, not str"]


def test_a_store_made_before_migrations_is_adopted_with_its_alerts(tmp_path):
    """fundwatch before Alembic made its tables with create_all; opening such a
    database stamps it as revision 0001 and upgrades it, keeping every alert."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE alerts (alert_id VARCHAR(64) PRIMARY KEY, rule_id VARCHAR(64) NOT "
            "NULL, severity VARCHAR(16) NOT NULL, subject_kind VARCHAR(16) NOT NULL, "
            "subject_id VARCHAR(128) NOT NULL, regions JSON NOT NULL, review VARCHAR(8) NOT "
            "NULL, window_start VARCHAR(40) NOT NULL, window_end VARCHAR(40) NOT NULL, "
            "detected_at VARCHAR(40) NOT NULL, summary TEXT NOT NULL, body TEXT NOT NULL, "
            "revision INTEGER NOT NULL, first_stored_at DATETIME NOT NULL, last_stored_at "
            "DATETIME NOT NULL)")
        conn.exec_driver_sql(
            "CREATE TABLE alert_revisions (id INTEGER PRIMARY KEY, alert_id VARCHAR(64) NOT "
            "NULL REFERENCES alerts (alert_id), revision INTEGER NOT NULL, severity "
            "VARCHAR(16) NOT NULL, body TEXT NOT NULL, stored_at DATETIME NOT NULL)")
        old = _alert(5)
        conn.execute(sa.text(
            "INSERT INTO alerts VALUES (:id, 'unfiled_cross_region', 'warning', "
            "'institution', 'H440100001', '[\"440100\"]', 'single', 's', 'e', 'd', 'x', :body, "
            "1, '2025-01-01 00:00:00', '2025-01-01 00:00:00')"),
            {"id": old["alert_id"], "body": _canonical(old)})
    engine.dispose()

    store = AlertStore(url)
    assert schema_revision(store.engine) == schema_head()
    assert store.get(old["alert_id"]) == old
    # The adopted alert has its side, open, and takes updates like any other.
    assert store.sides(old["alert_id"])["440100"]["status"] == "open"
    assert store.history(old["alert_id"])[0]["actor"] == "migration 0002"
    assert store.upsert(_alert(6)) == "updated"
    assert store.transition(old["alert_id"], "ack", actor="li") == {"440100": "acknowledged"}
    store.dispose()


def test_migrations_run_down_and_up_again(tmp_path):
    from alembic import command

    from sinks.store import _alembic_config

    store = AlertStore(f"sqlite:///{tmp_path / 'm.db'}")
    with store.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert schema_revision(store.engine) == "0001"
    store.dispose()
    store = AlertStore(f"sqlite:///{tmp_path / 'm.db'}")  # opening upgrades again
    assert schema_revision(store.engine) == schema_head()
    store.upsert(_joint())
    assert len(store.sides(_joint()["alert_id"])) == 2
    store.dispose()


def test_sides_closed_before_0004_get_the_severity_they_were_closed_at(store):
    """0004 keeps the severity at the close on the side; sides closed before it are
    filled from the revisions stored up to the close."""
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic import command

    from sinks.store import _alembic_config

    resolved_at_critical, dismissed_at_warning = _alert(5)["alert_id"], "fw-other-finding"
    for alert in (_alert(5), _alert(21, "critical"), *(
            {**a, "alert_id": dismissed_at_warning} for a in (_alert(22, "critical"),
                                                             _alert(9)))):
        store.upsert(alert)
    store.transition(resolved_at_critical, "resolve", actor="li", note="sanctioned")
    store.transition(dismissed_at_warning, "dismiss", actor="li", note="filings found")
    store.upsert(_alert(6))  # the stream processed again: warning after the close
    with store.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0003")
        # Times as 0002 kept them, a second apart: the close at 10:00:01.
        conn.execute(sa.text("UPDATE alert_sides SET changed_at = "
                             "'2026-12-07T10:00:01.000+00:00'"))
        for revisions, second in (("< 3", 0), ("= 3", 2)):
            conn.execute(sa.text(f"UPDATE alert_revisions SET stored_at = :at "
                                 f"WHERE revision {revisions}").bindparams(
                sa.bindparam("at", datetime(2026, 12, 7, 10, 0, second, tzinfo=UTC),
                             type_=sa.DateTime(timezone=True))))
    url = store.engine.url.render_as_string(hide_password=False)
    store.dispose()

    store = AlertStore(url)  # opening upgrades to 0004, filling the closed sides
    with store.engine.connect() as conn:
        kept = dict(conn.execute(sa.text(
            "SELECT alert_id, closed_severity FROM alert_sides")).all())
    assert kept == {resolved_at_critical: "critical", dismissed_at_warning: "warning"}
    store.upsert(_alert(23, "critical"))
    store.upsert({**_alert(23, "critical"), "alert_id": dismissed_at_warning})
    assert store.sides(resolved_at_critical)["440100"]["status"] == "resolved"
    assert store.sides(dismissed_at_warning)["440100"]["status"] == "open"
    store.dispose()


def test_a_postgresql_host_that_stops_answering_is_an_error_not_a_wait(pg_schema_url):
    """The live sink retries a store that fails and logs why; a store that never
    answers would hold the alerts behind it with nothing in the log. libpq gets
    timeouts (PG_TIMEOUTS) unless the URL sets its own."""
    import socket
    import time

    from sqlalchemy.exc import OperationalError

    from sinks.store import PG_TIMEOUTS, store_engine

    store = AlertStore(pg_schema_url)
    try:
        with store.engine.connect() as conn:
            dsn = conn.connection.dbapi_connection.info.dsn
    finally:
        store.dispose()
    for name, value in PG_TIMEOUTS.items():
        assert f"{name}={value}" in dsn.split(), (name, dsn)

    # A host that takes the connection and never says a word; the URL's own
    # connect_timeout (2 s) wins over the default (10 s).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    engine = store_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
                          "?connect_timeout=2")
    try:
        began = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            engine.connect()
        assert 1.5 < time.monotonic() - began < 8
    finally:
        engine.dispose()
        silent.close()
