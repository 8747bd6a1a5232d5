"""The alert store, on real SQLite and real PostgreSQL."""
from __future__ import annotations

import copy

import pytest

from rules.alerts import make_alert, month_window
from sinks.store import AlertStore


def _alert(count: int, severity: str = "warning") -> dict:
    return make_alert("unfiled_cross_region", severity, "institution", "H440100001",
                      regions=["440100"], window=month_window("2025-03"),
                      detected_at="2025-03-09T10:00:00+08:00",
                      summary=f"{count} unfiled stays", evidence={"settlement_count": count},
                      settlement_ids=[f"S{i}" for i in range(count)])


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = AlertStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    else:
        s = AlertStore(request.getfixturevalue("pg_schema_url"))
    yield s
    s.dispose()


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
