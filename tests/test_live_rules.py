"""Every rule's fixture, through the live worker and through the offline driver:
the same alerts, byte for byte. Finds the rules by itself, like test_all_rules.

The fixtures' records are merged in event-time order: one stream of one province,
none later than the allowed lateness. (A record later than that — a fixture may
hold one on purpose — is counted in the day it belongs to or not depending on
whether that day had closed when it came, and a live worker closes days between
batches, a replay between records: that margin is documented, not equal.) One
partition end to end; test_joint_review runs four.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from infra.broker import ensure_topics
from rules.core import DetectionCore, discover, load_rules
from rules.registry import Registry
from streams.live import start_worker, stop_worker
from streams.offline import OfflinePipeline
from streams.records import parse
from streams.watermark import event_ms
from tests.live_support import run_through_worker

pytestmark = pytest.mark.broker


def _toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def test_every_rule_fixture_live_equals_offline(broker, tmp_path):
    fixtures = {rule_id: json.loads(Path(inspect.getfile(cls)).with_suffix(".fixture.json")
                                    .read_text(encoding="utf-8"))
                for rule_id, (cls, _) in discover().items()}
    # One configuration for all rules: each with its fixture's parameters.
    lines = ["[fundwatch]"]
    for rule_id, fixture in fixtures.items():
        params = dict(fixture.get("params", {}))
        provinces = params.pop("provinces", {})
        lines.append(f"[rules.{rule_id}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in params.items()]
        for prov, values in provinces.items():
            lines.append(f'[rules.{rule_id}.provinces."{prov}"]')
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    config = tmp_path / "fundwatch.toml"
    config.write_text("\n".join(lines) + "\n")
    # One registry for the merged stream: the union of the fixtures' (a pool two
    # fixtures both list keeps the first one's entry). The fixtures' streams mix
    # too, so the alerts are not each fixture's own: what is compared is that live
    # and offline agree on the same input.
    registry = merged_registry([f["registry"] for f in fixtures.values() if "registry" in f])
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump(registry, allow_unicode=True))
    records = [orjson.dumps(e) for f in fixtures.values() for e in f["events"]]
    events = sorted(records, key=lambda raw: event_ms(parse(raw)))  # stable: ties keep order

    observed, offline = through_worker_and_offline(
        broker, tmp_path, config, events, Registry.from_dict(registry), pools)
    assert offline.alerts, "the fixtures together should raise alerts"
    assert set(observed.alerts) == set(offline.alerts)
    for alert_id, alert in offline.alerts.items():
        assert orjson.dumps(observed.alerts[alert_id], option=orjson.OPT_SORT_KEYS) == \
            orjson.dumps(alert, option=orjson.OPT_SORT_KEYS), alert["rule_id"]
    # Revisions on the way may be fewer live: a worker closes the days a whole batch
    # moved the watermark past in one call, and a rule states an alert once per call
    # (the replay closes them one by one). Never more (no crash here: no re-sends).
    assert len(offline.alerts) <= observed.alert_revisions <= len(offline.emitted)


def through_worker_and_offline(broker, tmp_path, config, events, registry=None, pools=None):
    """The same records through a live worker (one partition, its own topics) and the
    offline driver, both with the rules of ``config``: (observed, offline pipeline)."""
    from infra.config import Settings

    tag = uuid.uuid4().hex[:8]
    settings = Settings.load(env={"FUNDWATCH_CONFIG": str(config)}).with_(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"r{tag}.",
        app_id=f"rules-{tag}", partitions=1, data_dir=str(tmp_path / "data"),
        db_url=f"sqlite:///{tmp_path / 'alerts.db'}",
        pools_path=str(pools) if pools else None)
    ensure_topics(broker.bootstrap_servers, settings)
    offline = OfflinePipeline(DetectionCore(load_rules(settings.rules, registry=registry),
                                            partitions=settings.partitions))
    offline.feed_all(events)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        observed = asyncio.run(run_through_worker(settings, worker, events, len(events),
                                                  timeout_s=120))
    finally:
        stop_worker(worker)
    return observed, offline


def merged_registry(registries: list[dict]) -> dict:
    out: dict = {"schema": "pools/v1", "provinces": {}, "pools": [], "institutions": []}
    seen_pools, seen_institutions = set(), set()
    for registry in registries:
        for code, province in (registry.get("provinces") or {}).items():
            out["provinces"].setdefault(code, province)
        for pool in registry.get("pools") or []:
            key = (pool["region"], pool["insurance_type"])
            if key not in seen_pools:
                seen_pools.add(key)
                out["pools"].append(pool)
        for institution in registry.get("institutions") or []:
            if institution["id"] not in seen_institutions:
                seen_institutions.add(institution["id"])
                out["institutions"].append(institution)
    return out


def test_a_rule_shipped_as_a_package_runs_in_the_live_worker(broker, tmp_path, monkeypatch):
    """A province's rule — one scaffolded file plus its fixture, in a package of its
    own declared under the entry point group ``fundwatch.rules`` — is run by the live
    worker with no edit anywhere in fundwatch, and gives the alert its fixture
    expects, the same as the offline driver."""
    from rules.commands import new_rule
    from rules.fixtures import subset_diff
    from tests.rule_package import declare_entry_points

    site = tmp_path / "site"
    name = f"shipped_{uuid.uuid4().hex[:8]}"
    package = site / f"province_rules_{uuid.uuid4().hex[:8]}"
    new_rule(name, package)
    declare_entry_points(site, package, [name])
    monkeypatch.setenv("PYTHONPATH", str(site))  # the worker process finds it there
    monkeypatch.syspath_prepend(str(site))       # and so does this one (offline side)
    assert name in discover()
    fixture = json.loads((package / f"{name}.fixture.json").read_text(encoding="utf-8"))
    config = tmp_path / "fundwatch.toml"
    config.write_text("\n".join([f"[rules.{name}]"] + [
        f"{k} = {_toml_value(v)}" for k, v in fixture["params"].items()]) + "\n")

    events = [orjson.dumps(e) for e in fixture["events"]]
    observed, offline = through_worker_and_offline(broker, tmp_path, config, events)
    shipped = [a for a in observed.alerts.values() if a["rule_id"] == name]
    assert [subset_diff(expected, a) for expected, a in zip(fixture["expect"], shipped)] \
        == [[]] * len(fixture["expect"]) and len(shipped) == len(fixture["expect"]) >= 1
    assert observed.alerts == offline.alerts
