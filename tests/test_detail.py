"""Settlements and branches kept per day in buckets (``rules.detail``), and the rule
state written before them: a worker upgraded over its changelogs carries on."""
from __future__ import annotations

import orjson
import pytest

from rules import detail
from rules.builtin.cross_province_surge import CrossProvinceSurge
from rules.builtin.pharmacy_chain_anomaly import PharmacyChainAnomaly
from rules.core import DetectionCore
from rules.fixtures import final_alerts, load_fixture
from rules.registry import Registry
from streams.offline import OfflinePipeline


def flat(bucketed: dict) -> dict:
    return dict(detail.items(bucketed))


def as_before_buckets(state: dict) -> dict:
    """A state of either rule as the version before buckets wrote it."""
    old = {k: v for k, v in state.items() if k != "layout"}
    if "det" in old:
        old["det"] = {d: {"ids": flat(e["ids"]), "x": e["x"]} for d, e in old["det"].items()}
    if "days" in old and "branches" in old:  # the chain's days: branch → figures
        old["days"] = {d: flat(v) for d, v in old["days"].items()}
    return old


def run(cls, fixture, cut: int | None = None) -> tuple[OfflinePipeline, int]:
    """The rule's fixture through the offline driver; at ``cut``, every state of
    the rule is turned back into the layout before buckets, as a changelog written
    by the version before holds it. (The pipeline, how many settlements the states
    turned back held in detail.)"""
    registry = Registry.from_dict(fixture["registry"]) if "registry" in fixture else None
    pipeline = OfflinePipeline(DetectionCore([cls(registry=registry,
                                                  **fixture.get("params", {}))]))
    held = 0
    for i, event in enumerate(fixture["events"]):
        if i == cut:
            for slot, stored in list(pipeline.state.items()):
                if slot.startswith(cls.rule_id + "|"):
                    old = as_before_buckets(stored["v"])
                    held += sum(len(e["ids"]) for e in old.get("det", {}).values())
                    pipeline.state[slot] = {**stored, "v": old}
        assert pipeline.feed(orjson.dumps(event), source=f"fixture/{i}") == "accepted"
    return pipeline, held


@pytest.mark.parametrize("cls", [PharmacyChainAnomaly, CrossProvinceSurge],
                         ids=lambda c: c.rule_id)
@pytest.mark.parametrize("share", [0.3, 0.6, 0.9])
def test_state_written_before_buckets_is_carried_on(cls, share):
    fixture = load_fixture(cls)
    whole, _ = run(cls, fixture)
    assert final_alerts(whole), "the fixture raises alerts to compare"
    upgraded, held = run(cls, fixture, cut=int(len(fixture["events"]) * share))
    assert held > 0  # the rule met settlements kept the old way, not an empty state
    assert orjson.dumps(final_alerts(upgraded)) == orjson.dumps(final_alerts(whole))
    assert upgraded.emitted == whole.emitted
    assert upgraded.state == whole.state


def test_a_day_of_many_settlements_is_spread_over_its_buckets():
    day = None
    for n in range(20_000):
        day = detail.put(day, f"S{n:07d}", [n])
    sizes = [len(bucket) for middle in day.values() for bucket in middle.values()]
    assert len(day) == 16 and all(len(middle) == 16 for middle in day.values())
    assert len(sizes) == detail.BUCKETS and sum(sizes) == detail.count(day) == 20_000
    # Adding one more copies two maps of 16 and one bucket, not the day.
    assert max(sizes) < 3 * 20_000 / detail.BUCKETS
    # The same place in every process and version: a state in a changelog is found.
    assert detail.path_of("S0000001") == ("c", "d")
