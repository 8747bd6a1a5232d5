"""Every rule's fixture, through the live worker and through the offline driver:
the same alerts, byte for byte. Finds the rules by itself, like test_all_rules.

One partition end to end, so the live path sees the records in the file's order —
the property proved here is "same code, same alerts"; robustness to reordering
within the allowed lateness is each rule's own business (its tests).
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
    registries = [f["registry"] for f in fixtures.values() if "registry" in f]
    assert len(registries) <= 1, "fixtures with different registries: split this test"
    pools = tmp_path / "pools.yaml"
    if registries:
        pools.write_text(yaml.safe_dump(registries[0], allow_unicode=True))
    events = [orjson.dumps(e) for f in fixtures.values() for e in f["events"]]

    from infra.config import Settings

    tag = uuid.uuid4().hex[:8]
    settings = Settings.load(env={"FUNDWATCH_CONFIG": str(config)}).with_(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"r{tag}.",
        app_id=f"rules-{tag}", partitions=1, data_dir=str(tmp_path / "data"),
        db_url=f"sqlite:///{tmp_path / 'alerts.db'}",
        pools_path=str(pools) if registries else None)
    ensure_topics(broker.bootstrap_servers, settings)

    registry = Registry.from_dict(registries[0]) if registries else None
    offline = OfflinePipeline(DetectionCore(load_rules(settings.rules, registry=registry)))
    offline.feed_all(events)
    assert offline.alerts, "the fixtures together should raise alerts"

    worker = start_worker(settings, tmp_path / "worker.log")

    try:
        observed = asyncio.run(run_through_worker(settings, worker, events, len(events),
                                                  timeout_s=120))
    finally:
        stop_worker(worker)
    assert set(observed.alerts) == set(offline.alerts)
    for alert_id, alert in offline.alerts.items():
        assert orjson.dumps(observed.alerts[alert_id], option=orjson.OPT_SORT_KEYS) == \
            orjson.dumps(alert, option=orjson.OPT_SORT_KEYS), alert["rule_id"]
    # And as many revisions on the way (no crash here, so no re-sent alert either).
    assert observed.alert_revisions == len(offline.emitted)
