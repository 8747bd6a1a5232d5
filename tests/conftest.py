"""Shared fixtures: the real embedded broker (Tansu) and real databases."""
from __future__ import annotations

import os
import uuid

import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.config import Settings
from tests.live_support import GROUP_TIMEOUTS

PG_URL = os.environ.get("FUNDWATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One Tansu for the session; each test isolates itself with its own topic prefix."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(Settings(), log_path=log) as b:
        yield b


@pytest.fixture
def live_settings(broker, tmp_path) -> Settings:
    """Settings for one test's pipeline: its own topics, consumer group and store."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers=broker.bootstrap_servers,
                        topic_prefix=f"t{tag}.", app_id=f"fundwatch-{tag}",
                        partitions=2, data_dir=str(tmp_path / "data"),
                        db_url=f"sqlite:///{tmp_path / 'alerts.db'}",
                        **GROUP_TIMEOUTS)
    ensure_topics(broker.bootstrap_servers, settings)
    return settings


def _pg_available(url: str) -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """PostgreSQL at 127.0.0.1:5432/test. Skipped only where it is absent and
    FUNDWATCH_REQUIRE_PG is unset; CI sets it, so there a missing database fails."""
    problem = _pg_available(PG_URL)
    if problem:
        if os.environ.get("FUNDWATCH_REQUIRE_PG"):
            pytest.fail(f"FUNDWATCH_REQUIRE_PG is set but PostgreSQL is not reachable at "
                        f"{PG_URL}: {problem}")
        pytest.skip(f"PostgreSQL not reachable ({problem})")
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_url):
    """A fresh schema per test so tests never see each other's rows."""
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:10]
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    url = f"{pg_url}?options=-csearch_path%3D{schema}"
    yield url
    with engine.begin() as conn:
        conn.execute(sa.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An alert store on a SQLite file and, the same test again, on PostgreSQL (a schema
    of its own)."""
    from sinks.store import AlertStore

    if request.param == "sqlite":
        s = AlertStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    else:
        s = AlertStore(request.getfixturevalue("pg_schema_url"))
    yield s
    s.dispose()
