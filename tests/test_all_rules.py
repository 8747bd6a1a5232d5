"""One battery of checks, run against every rule that can be discovered.

A data engineer adds a rule as one module plus a ``<module>.fixture.json`` beside
it; this test finds both without being edited. The checks are those of
``fundwatch rules test`` (``rules.fixtures.CHECKS``): the declaration, purity (no
Faust, no wall clock), the docstring examples, the fixture (its events through the
offline driver — the live worker's stages over memory — give the expected alerts
and nothing else, twice byte-identical, the same with live-style JSON state, an
idempotent close timer, no key called not due with work waiting) and the contract's
alert schema.
"""
from __future__ import annotations

import importlib
import sys

import pytest

from rules.core import discover
from rules.fixtures import CHECKS, CONTRACT

RULES = discover()
CHECK = dict(CHECKS)


def test_there_are_rules():
    assert "unfiled_cross_region" in RULES


@pytest.mark.parametrize("check", list(CHECK))
@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_conforms(rule_id, check):
    if check == "contract":  # the check passes quietly without these: say so here
        pytest.importorskip("jsonschema")
        if not (CONTRACT / "alert.schema.json").exists():
            pytest.skip("contract folder not beside the repository")
    problems = CHECK[check](RULES[rule_id][0])
    assert not problems, f"{rule_id} [{check}]\n" + "\n".join(problems)


def test_the_battery_finds_what_is_wrong_with_a_rule(tmp_path, monkeypatch):
    """Each check fails on a rule that breaks it: a scaffold spoiled five ways."""
    from rules.commands import new_rule

    package = tmp_path / "spoiled_rules"
    new_rule("spoiled", package)
    module = package / "spoiled.py"
    source = module.read_text(encoding="utf-8")
    source = source.replace(">>>", "...")  # no runnable example any more
    source = source.replace('subject_kind = "institution"', 'subject_kind = "hospital"')
    source += ("\n\ndef _now():\n    import datetime\n    return datetime.datetime.now()\n"
               "\n\ndef _not_run():\n    '''\n    >>> 1 + 1\n    3\n    '''\n")
    module.write_text(source, encoding="utf-8")
    fixture = package / "spoiled.fixture.json"
    fixture.write_text(fixture.read_text(encoding="utf-8").replace(
        '"severity": "warning"', '"severity": "critical"'), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = importlib.import_module("spoiled_rules.spoiled").Spoiled
    try:
        problems = {name: check(cls) for name, check in CHECKS}
    finally:
        sys.modules.pop("spoiled_rules.spoiled", None)
        sys.modules.pop("spoiled_rules", None)
    assert any("subject_kind" in p for p in problems["declaration"])
    assert any("runnable example" in p for p in problems["declaration"])
    assert problems["purity"] == ["the module reads the wall clock"]
    assert any("1 of 1 docstring example(s) failed" in p for p in problems["doctests"])
    assert any(".severity: expected 'critical', got 'warning'" in p
               for p in problems["fixture"])


@pytest.mark.parametrize("rule_id", ["overlapping_stay", "phantom_bed"])
def test_the_battery_finds_a_rule_that_calls_waiting_work_not_due(rule_id, monkeypatch):
    """A close visits only due keys (live, an index of them): a rule whose ``due``
    hides a stay still waiting for its day's close is caught by the fixture check."""
    from rules.fixtures import _due_problems, load_fixture

    cls = RULES[rule_id][0]
    fixture = load_fixture(cls)
    assert _due_problems(cls, fixture) == []
    monkeypatch.setattr(cls, "due", lambda self, state: False)
    problems = _due_problems(cls, fixture)
    assert problems and all("due() says the close has nothing to do" in p for p in problems)
