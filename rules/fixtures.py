"""Running a rule's fixture, and the rest of the conformance battery, outside pytest.

Every rule ships beside its module a ``<module>.fixture.json``: a ``description``,
optional ``params`` (the rule's parameters for this run) and ``registry`` (the
pools/v1 registry it reads), the ``events`` (settlement/v1 and contribution/v1
records, as JSON objects) and the alerts it must ``expect``. The events go through
the offline driver (:class:`streams.offline.OfflinePipeline`, the live worker's
stages over memory); each expected alert must be a *subset* of one actual alert
(keys left out are not compared), and no alert may be left over.

``tests/test_all_rules.py`` and ``fundwatch rules test`` run the same checks, so a
rule that passes one passes the other. Each check returns a list of problems, each
a readable sentence (empty = pass):

>>> subset_diff({"severity": "warning", "evidence": {"count": 3, "month": "2025-03"}},
...             {"severity": "critical", "evidence": {"count": 3}})
[".severity: expected 'warning', got 'critical'", '.evidence.month: missing']
>>> match_alerts([{"rule_id": "r", "severity": "info"}], [])
['expected alert 1 not produced: {"rule_id": "r", "severity": "info"}\\n   no alert at all']
"""
from __future__ import annotations

import difflib
import doctest
import importlib
import inspect
import io
import json
import re
from pathlib import Path
from typing import Any

import orjson

from rules.core import DetectionCore, Rule
from streams.changelog import EncodedValues

#: The contract folder (alert.schema.json), when it stands beside the repository.
CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "contract"

SUBJECT_KINDS = {"pool", "institution", "person", "chain", "settlement"}
KEY_KINDS = {"pool", "institution", "person", "chain", "province"}
RULE_ID = re.compile(r"[a-z][a-z0-9_]{2,63}")

# Rules are pure: no streaming framework, no clock.
FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+faust\b", re.M), "imports faust"),
    (re.compile(r"\b(datetime|date)\.(now|today|utcnow)\("), "reads the wall clock"),
    (re.compile(r"\btime\.(time|monotonic|perf_counter)\("), "reads the wall clock"),
]


class FixtureError(Exception):
    """The fixture itself is wrong (missing, malformed, an event the pipeline refuses)."""


def fixture_path(cls: type[Rule]) -> Path:
    """Where a rule's fixture lives: beside its module, ``<module>.fixture.json``."""
    return Path(inspect.getfile(cls)).with_suffix(".fixture.json")


def load_fixture(cls: type[Rule]) -> dict[str, Any]:
    path = fixture_path(cls)
    if not path.exists():
        raise FixtureError(f"{cls.rule_id}: add its fixture at {path}")
    try:
        fixture = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(fixture, dict):
        raise FixtureError(f"{path}: should be a JSON object")
    missing = [k for k in ("description", "events") if not fixture.get(k)]
    if "expect" not in fixture:
        missing.append("expect")
    if missing:
        raise FixtureError(f"{path}: needs a non-empty {', '.join(missing)}")
    return fixture


class JsonTable(EncodedValues):
    """State as the live worker keeps it (``streams.changelog.EncodedValues``): every
    value is JSON in the table, so tuples become lists, int keys strings... And
    every value longer than ``piece_bytes`` (here 256 bytes, so that each rule's
    fixture writes some) is kept in pieces, as a large chain's state is."""

    def __init__(self, piece_bytes: int = 256):
        super().__init__({}, piece_bytes=piece_bytes)


def run_fixture(cls: type[Rule], fixture: dict[str, Any], state=None):
    """The fixture's events through the offline driver with this one rule (configured
    with the fixture's ``params`` and ``registry``); returns the pipeline.

    Raises :class:`FixtureError` when an event is not accepted (invalid, duplicate):
    a fixture's events must all reach the rule.
    """
    from rules.registry import Registry
    from streams.offline import OfflinePipeline

    registry = Registry.from_dict(fixture["registry"]) if "registry" in fixture else None
    rule = cls(registry=registry, **fixture.get("params", {}))
    pipeline = OfflinePipeline(DetectionCore([rule]))
    if state is not None:
        pipeline.state = state
    for i, event in enumerate(fixture["events"], 1):
        outcome = pipeline.feed(orjson.dumps(event), source=f"fixture/{i}")
        if outcome != "accepted":
            reasons = (pipeline.deadletters[-1]["reasons"] if outcome == "rejected"
                       else "an exact duplicate of an earlier event")
            raise FixtureError(f"fixture event {i} was {outcome}: {reasons}")
    return pipeline


def final_alerts(pipeline) -> list[dict]:
    """The alerts that stand at the end (each alert_id's last revision), by alert_id."""
    return sorted(pipeline.alerts.values(), key=lambda a: a["alert_id"])


def subset_diff(expected, actual, path: str = "") -> list[str]:
    """How ``actual`` falls short of containing ``expected`` (dicts compared by the
    expected keys only, anything else by equality)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}: missing")
            else:
                out += subset_diff(v, actual[k], f"{path}.{k}")
        return out
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def match_alerts(expected: list[dict], actual: list[dict]) -> list[str]:
    """Pair each expected alert with the actual alert it is closest to; report the
    expected ones not produced (with their differences to the closest actual alert)
    and the actual ones left over (in full, unless already named as the closest)."""
    problems = []
    unmatched = list(actual)
    closest: list[dict] = []
    for number, want in enumerate(expected, 1):
        diffs = [(subset_diff(want, a), a) for a in unmatched]
        best = min(diffs, key=lambda d: len(d[0]), default=(["no alert at all"], None))
        if best[0]:
            text = (f"expected alert {number} not produced: "
                    + json.dumps(want, ensure_ascii=False))
            if best[1] is not None:
                closest.append(best[1])
                text += f"\n closest produced alert: {_identify(best[1])}, differs in"
            problems.append(text + "\n" + "\n".join("   " + p for p in best[0]))
        else:
            unmatched.remove(best[1])
    for extra in unmatched:
        if any(extra is c for c in closest):
            continue
        problems.append("unexpected alert:\n" + "\n".join(difflib.ndiff(
            [], json.dumps(extra, ensure_ascii=False, indent=1).splitlines())))
    return problems


def _identify(alert: dict) -> str:
    subject = alert.get("subject") or {}
    window = alert.get("window") or {}
    return (f"{alert.get('alert_id')} ({alert.get('severity')}, {subject.get('kind')} "
            f"{subject.get('id')}, window {window.get('start')} to {window.get('end')})")


def example_alert(cls: type[Rule], fixture: dict[str, Any] | None = None) -> dict | None:
    """The alert the fixture's first expectation stands for, as the offline driver
    produces it (or the first alert produced, if none matches); None if none fires."""
    fixture = fixture if fixture is not None else load_fixture(cls)
    actual = final_alerts(run_fixture(cls, fixture))
    for want in fixture.get("expect", [])[:1]:
        for alert in actual:
            if not subset_diff(want, alert):
                return alert
    return actual[0] if actual else None


def check_fixture(cls: type[Rule]) -> list[str]:
    """The fixture's expected alerts are produced, and nothing else; two runs give
    byte-identical alerts; a closing rule's timer is idempotent; live-style state (a
    JSON round trip on every write) changes nothing; the rule never fails on the
    fixture's events; a state it calls not ``due`` is one its close leaves alone."""
    try:
        fixture = load_fixture(cls)
        pipeline = run_fixture(cls, fixture)
    except FixtureError as exc:
        return [str(exc)]
    except Exception as exc:  # noqa: BLE001 - a bad params/registry block, a rule bug
        return [f"the fixture could not be run: {type(exc).__name__}: {exc}"]
    problems = [f"rule failed: {r['message']}" for d in pipeline.deadletters
                for r in d["reasons"] if r["code"] == "rule_failed"]
    actual = final_alerts(pipeline)
    problems += match_alerts(fixture["expect"], actual)
    if problems:
        return problems

    again = final_alerts(run_fixture(cls, fixture))
    if orjson.dumps(again) != orjson.dumps(actual):
        problems.append("not deterministic: a second run of the fixture gave different alerts")

    if cls.closes() and pipeline.closed_ms is not None:
        from streams.watermark import last_midnight

        midnight = last_midnight(pipeline.closed_ms)
        core = pipeline.core
        again = core.close(list(pipeline.state), pipeline.state, midnight)
        if (again.alerts, again.failures) != ([], []):
            problems.append(f"close timer not idempotent: closed again at {midnight.isoformat()} "
                            f"it gave {len(again.alerts)} alert(s), failures {again.failures}")
        else:
            core.commit(pipeline.state, again)
            third = core.close(list(pipeline.state), pipeline.state, midnight)
            if (third.updates, third.alerts, third.failures) != ({}, [], []):
                problems.append("close timer not idempotent: a third close at the same "
                                "midnight changed the state or fired")

    live = run_fixture(cls, fixture, state=JsonTable())
    if orjson.dumps(live.emitted) != orjson.dumps(run_fixture(cls, fixture).emitted):
        problems.append("state is not JSON-safe: with live-style state (a JSON round trip "
                        "on every write, as a Faust table, long values in pieces) the rule "
                        "emits other alerts")
    if stray := live.state.stray_pieces():
        problems.append(f"live-style state left pieces no value names: {stray[:3]}")
    return problems + _due_problems(cls, fixture)


class _Written(dict):
    """A dict state that remembers every value written to it, in order."""

    def __init__(self):
        super().__init__()
        self.written: list[tuple[str, Any]] = []

    def __setitem__(self, slot, value):
        self.written.append((slot, value))
        super().__setitem__(slot, value)


def _due_problems(cls: type[Rule], fixture: dict[str, Any]) -> list[str]:
    """Every state the rule held during the fixture's run and calls not ``due`` is
    one its close leaves alone, at the last midnight of the run and a year later:
    the live worker does not visit such keys at a close."""
    if not cls.closes() or cls.book is not None:
        return []
    from datetime import timedelta

    from streams.watermark import last_midnight

    pipeline = run_fixture(cls, fixture, state=_Written())
    rule = pipeline.core.rules[0]
    newest = pipeline.newest_ms or 0
    midnights = [last_midnight(newest), last_midnight(newest) + timedelta(days=366)]
    problems = []
    for slot, stored in pipeline.state.written:
        rule_id, _, key = slot.partition("|")
        if rule_id != rule.rule_id or key.startswith("~") or rule.due(stored["v"]):
            continue
        for midnight in midnights:
            if cls.shared:
                changed, _, fired, scores = rule.close_shared(0, {key: stored["v"]}, None,
                                                              midnight)
                acts = fired or scores or changed.get(key, stored["v"]) != stored["v"]
            else:
                after, fired = rule.close(stored["v"], midnight)
                acts = fired or after != stored["v"]
            if acts:
                problems.append(f"{slot}: due() says the close has nothing to do, but the "
                                f"close at {midnight.isoformat()} changes it or fires")
                break
    return problems


def check_declaration(cls: type[Rule]) -> list[str]:
    """Its id, kinds, parameters (each described, its default within bounds) and a
    runnable example in the module's or the class's docstring."""
    rule_id = getattr(cls, "rule_id", "?")
    problems = []
    if not RULE_ID.fullmatch(rule_id):
        problems.append(f"rule_id {rule_id!r} should match {RULE_ID.pattern}")
    if not getattr(cls, "description", None):
        problems.append("give the class a one-line description")
    if getattr(cls, "subject_kind", None) not in SUBJECT_KINDS:
        problems.append(f"subject_kind should be one of {', '.join(sorted(SUBJECT_KINDS))}")
    if getattr(cls, "key_kind", None) not in KEY_KINDS:
        problems.append(f"key_kind should be one of {', '.join(sorted(KEY_KINDS))}")
    for name, param in cls.params.items():
        if not param.description:
            problems.append(f"parameter {name} has no description")
        try:
            param.check(rule_id, name, param.default)
        except Exception as exc:  # noqa: BLE001 - RuleConfigError, a bad type
            problems.append(f"parameter {name}: its default is not valid ({exc})")
    if ">>>" not in (inspect.getmodule(cls).__doc__ or "") + (cls.__doc__ or ""):
        problems.append("give the module or class docstring a runnable example (>>>)")
    return problems


def check_purity(cls: type[Rule]) -> list[str]:
    source = inspect.getsource(inspect.getmodule(cls))
    return [f"the module {what}" for pattern, what in FORBIDDEN if pattern.search(source)]


def check_doctests(cls: type[Rule]) -> list[str]:
    """Run the examples of the rule's module; each failure as doctest reports it."""
    module = inspect.getmodule(cls)
    out = io.StringIO()
    runner = doctest.DocTestRunner(verbose=False)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    if result.attempted == 0:
        return ["the module has no runnable example"]
    if result.failed:
        return [f"{result.failed} of {result.attempted} docstring example(s) failed:\n"
                + out.getvalue().rstrip()]
    return []


def check_contract(cls: type[Rule]) -> list[str]:
    """Every alert the fixture makes validates against the contract's alert schema
    (skipped where jsonschema or the contract folder is absent)."""
    schema_path = CONTRACT / "alert.schema.json"
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        return []
    if not schema_path.exists():
        return []
    validator = jsonschema.Draft202012Validator(
        json.loads(schema_path.read_text(encoding="utf-8")),
        format_checker=jsonschema.FormatChecker())
    try:
        emitted = run_fixture(cls, load_fixture(cls)).emitted
    except Exception:  # noqa: BLE001 - reported by check_fixture
        return []
    if not emitted:
        return ["its fixture should make it fire at least once"]
    problems = []
    for alert in emitted:
        errors = sorted(validator.iter_errors(alert), key=str)
        if errors:
            problems.append(f"alert {alert['alert_id']} breaks the contract: "
                            f"{errors[0].message}")
    return problems


#: The whole battery, in the order ``fundwatch rules test`` reports it.
CHECKS = [
    ("declaration", check_declaration),
    ("purity", check_purity),
    ("doctests", check_doctests),
    ("fixture", check_fixture),
    ("contract", check_contract),
]


def conformance(cls: type[Rule]) -> dict[str, list[str]]:
    """Every check of the battery: check name → problems (empty lists pass)."""
    results = {}
    for name, check in CHECKS:
        try:
            results[name] = check(cls)
        except Exception as exc:  # noqa: BLE001 - one broken rule must not stop the run
            results[name] = [f"the check itself failed: {type(exc).__name__}: {exc}"]
    return results
