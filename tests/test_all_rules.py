"""One battery of checks, run against every rule that can be discovered.

A data engineer adds a rule as one module plus a ``<module>.fixture.json`` beside
it; this test finds both without being edited. The fixture's events go through the
offline driver (the same stages as the live worker) and the alerts that stand at
the end must match ``expect`` (each expected alert is a subset of an actual one).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
from collections.abc import MutableMapping
from pathlib import Path

import orjson
import pytest

from rules.core import DetectionCore, discover
from rules.registry import Registry
from streams.offline import OfflinePipeline

RULES = discover()
CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "contract"
FORBIDDEN = [  # rules are pure: no streaming framework, no clock
    (re.compile(r"^\s*(import|from)\s+faust\b", re.M), "imports faust"),
    (re.compile(r"\b(datetime|date)\.(now|today|utcnow)\("), "reads the wall clock"),
    (re.compile(r"\btime\.(time|monotonic|perf_counter)\("), "reads the wall clock"),
]


def _fixture_path(cls) -> Path:
    return Path(inspect.getfile(cls)).with_suffix(".fixture.json")


class JsonTable(MutableMapping):
    """State as the live driver keeps it: a Faust table serialises every value to
    JSON on write and back on read, so tuples become lists, int keys strings..."""

    def __init__(self):
        self._data = {}

    def __getitem__(self, key):
        return orjson.loads(self._data[key])

    def __setitem__(self, key, value):
        self._data[key] = orjson.dumps(value)

    def __delitem__(self, key):
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


def _run(cls, fixture, state=None) -> OfflinePipeline:
    # A fixture may carry the pool registry (pools/v1) its rule reads.
    registry = Registry.from_dict(fixture["registry"]) if "registry" in fixture else None
    rule = cls(registry=registry, **fixture.get("params", {}))
    pipeline = OfflinePipeline(DetectionCore([rule]))
    if state is not None:
        pipeline.state = state
    for i, event in enumerate(fixture["events"], 1):
        outcome = pipeline.feed(orjson.dumps(event), source=f"fixture/{i}")
        assert outcome == "accepted", (
            f"fixture event {i} was {outcome}: {pipeline.deadletters[-1]['reasons']}")
    return pipeline


def _subset_diff(expected, actual, path="") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}: missing")
            else:
                out += _subset_diff(v, actual[k], f"{path}.{k}")
        return out
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def test_there_are_rules():
    assert "unfiled_cross_region" in RULES


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_declares_itself(rule_id):
    cls, origin = RULES[rule_id]
    assert re.fullmatch(r"[a-z][a-z0-9_]{2,63}", rule_id)
    assert cls.description and cls.subject_kind in {"pool", "institution", "person",
                                                    "chain", "settlement"}
    assert cls.key_kind in {"pool", "institution", "person", "chain"}
    for name, param in cls.params.items():
        assert param.description, f"{rule_id}.{name} has no description"
        param.check(rule_id, name, param.default)
    assert ">>>" in (inspect.getmodule(cls).__doc__ or "") + (cls.__doc__ or ""), (
        f"{rule_id}: give the module or class a runnable example")


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_is_pure(rule_id):
    source = inspect.getsource(inspect.getmodule(RULES[rule_id][0]))
    for pattern, what in FORBIDDEN:
        assert not pattern.search(source), f"{rule_id} {what}"


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_doctests(rule_id):
    import doctest

    module = inspect.getmodule(RULES[rule_id][0])
    result = doctest.testmod(importlib.reload(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_fixture(rule_id):
    cls, _ = RULES[rule_id]
    path = _fixture_path(cls)
    assert path.exists(), f"{rule_id}: add its fixture at {path}"
    fixture = json.loads(path.read_text(encoding="utf-8"))
    assert fixture.get("description") and fixture.get("events") and "expect" in fixture

    pipeline = _run(cls, fixture)
    actual = sorted(pipeline.alerts.values(), key=lambda a: a["alert_id"])
    problems = []
    unmatched = list(actual)
    for expected in fixture["expect"]:
        diffs = [(_subset_diff(expected, a), a) for a in unmatched]
        best = min(diffs, key=lambda d: len(d[0]), default=(["no alert at all"], None))
        if best[0]:
            problems.append(f"expected alert not produced: {json.dumps(expected, ensure_ascii=False)}\n"
                            + "\n".join("   " + p for p in best[0]))
        else:
            unmatched.remove(best[1])
    for extra in unmatched:
        problems.append("unexpected alert:\n" + "\n".join(difflib.ndiff(
            [], json.dumps(extra, ensure_ascii=False, indent=1).splitlines())))
    assert not problems, "\n".join(problems)

    # Deterministic: a second run gives byte-identical alerts.
    again = sorted(_run(cls, fixture).alerts.values(), key=lambda a: a["alert_id"])
    assert orjson.dumps(again) == orjson.dumps(actual)

    # A closing rule's timer is idempotent: closed again at the same midnight (a
    # restarted worker re-running its last close), no state changes, no alert.
    if cls.closes() and pipeline.closed_ms is not None:
        from streams.watermark import last_midnight

        midnight = last_midnight(pipeline.closed_ms)
        again = pipeline.core.close(list(pipeline.state), pipeline.state, midnight)
        assert (again.alerts, again.failures) == ([], [])
        # (a key first seen after that close is closed now; a third time is a no-op)
        pipeline.core.commit(pipeline.state, again)
        third = pipeline.core.close(list(pipeline.state), pipeline.state, midnight)
        assert (third.updates, third.alerts, third.failures) == ({}, [], [])

    # Live-style state (JSON round trip on every write, as a Faust table) changes nothing.
    live = _run(cls, fixture, state=JsonTable())
    assert orjson.dumps(live.emitted) == orjson.dumps(_run(cls, fixture).emitted)


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_alerts_match_the_contract(rule_id):
    jsonschema = pytest.importorskip("jsonschema")
    if not (CONTRACT / "alert.schema.json").exists():
        pytest.skip("contract folder not beside the repository")
    schema = json.loads((CONTRACT / "alert.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema,
                                                format_checker=jsonschema.FormatChecker())
    cls, _ = RULES[rule_id]
    fixture = json.loads(_fixture_path(cls).read_text(encoding="utf-8"))
    emitted = _run(cls, fixture).emitted
    assert emitted, f"{rule_id}: its fixture should make it fire at least once"
    for alert in emitted:
        errors = sorted(validator.iter_errors(alert), key=str)
        assert not errors, f"{rule_id}: {errors[0].message} in {alert}"
