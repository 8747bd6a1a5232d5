"""``fundwatch rules list / explain / test / new / events`` (rules.commands)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rules.commands import markdown_lines, new_rule, scaffold_fixture
from rules.core import discover
from rules.fixtures import subset_diff
from streams.cli import main
from streams.records import parse
from tests.rule_package import declare_entry_points

ROOT = Path(__file__).resolve().parents[1]
FUNDWATCH = Path(sys.executable).with_name("fundwatch")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No config file from the caller's environment; sys.path restored after --dir."""
    for name in list(os.environ):
        if name.startswith("FUNDWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "path", list(sys.path))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["rules", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _package(tmp_path: Path) -> Path:
    """A fresh, uniquely named package directory (modules imported by one test do not
    meet another's)."""
    return tmp_path / f"fw_rules_{uuid.uuid4().hex[:8]}"


def _name() -> str:
    return f"scaffolded_{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ list

def test_list_shows_every_discovered_rule_with_its_origin_and_parameters(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    for rule_id, (cls, origin) in discover().items():
        header = next((line for line in lines if line.startswith(rule_id + " ")), None)
        assert header, f"rules list does not show {rule_id}"
        assert cls.subject_kind in header and origin in header and cls.description in header
        for name, param in cls.params.items():
            assert re.search(rf"\b{name}=", out), f"{rule_id}.{name} not listed"
    assert "builtin:rules.builtin.unfiled_cross_region" in out
    assert "min_settlements=5  critical_settlements=20" in out


def test_list_shows_the_configured_values(capsys, monkeypatch, tmp_path):
    config = tmp_path / "fw.toml"
    config.write_text('[rules.unfiled_cross_region]\nmin_settlements = 8\n'
                      '[rules.unfiled_cross_region.provinces."45"]\nmin_settlements = 12\n'
                      '[rules.siphon_shift]\nenabled = false\n', encoding="utf-8")
    monkeypatch.setenv("FUNDWATCH_CONFIG", str(config))
    code, out, _ = _run(capsys, "list")
    assert code == 0
    assert f"config: {config}" in out
    assert "min_settlements=8 (default 5)  critical_settlements=20" in out
    assert 'provinces."45": min_settlements=12' in out
    siphon = out[out.index("siphon_shift "):]
    assert siphon.splitlines()[1].strip() == "disabled: enabled = false in the config"


def test_a_wrong_config_is_a_configuration_error(capsys, monkeypatch, tmp_path):
    config = tmp_path / "fw.toml"
    config.write_text("[rules.unfiled_cross_region]\nmin_settlement = 8\n", encoding="utf-8")
    monkeypatch.setenv("FUNDWATCH_CONFIG", str(config))
    code, _, err = _run(capsys, "list")
    assert code == 2
    assert f"{config}: rules.unfiled_cross_region: unknown parameter(s) min_settlement" in err


def test_every_config_problem_is_named_with_its_file_and_key(capsys, monkeypatch, tmp_path):
    """Start-up (replay, like the worker) and `rules list` refuse a wrong file the
    same way: all its problems at once, each with the file and the key."""
    config = tmp_path / "fw.toml"
    config.write_text("[rules.unfiled_cross_region]\nmin_settlements = -3\nenabled = 'no'\n"
                      "[rules.unfiled_cross_region.provinces.\"4501\"]\nmin_settlements = 2\n"
                      "[rules.cross_province_surge.provinces.\"45\"]\nthreshhold = 0.3\n"
                      "[rules.no_such_rule]\nx = 1\n", encoding="utf-8")
    monkeypatch.setenv("FUNDWATCH_CONFIG", str(config))
    expected = [
        "rules.no_such_rule: unknown rule id",
        "rules.cross_province_surge.provinces.45: unknown parameter(s) threshhold",
        "rules.unfiled_cross_region.min_settlements: -3 is below the minimum 1",
        "rules.unfiled_cross_region.enabled: expected true or false, got 'no'",
        'rules.unfiled_cross_region.provinces.4501: a province is its two-digit prefix',
    ]
    events = tmp_path / "none.jsonl"
    events.write_text("", encoding="utf-8")
    for argv in (["rules", "list"], ["replay", str(events), "--alerts-out",
                                     str(tmp_path / "alerts.jsonl")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "5 problems in the rules configuration" in err, err
        for problem in expected:
            assert f"{config}: {problem}" in err, (argv, problem, err)
    assert not (tmp_path / "alerts.jsonl").exists()


# ------------------------------------------------------------------------------ explain

def test_explain_prints_the_method_parameters_fixture_and_an_example_alert(capsys):
    code, out, _ = _run(capsys, "explain", "unfiled_cross_region")
    assert code == 0
    assert out.startswith("unfiled_cross_region — Cross-region inpatient settlements")
    assert "Cross-region settlement requires a filing" in out  # the docstring's prose
    assert ">>>" not in out and "rule.apply" not in out  # without its examples
    assert "min_settlements  int, default 5, minimum 1" in out
    assert "unfiled cross-region inpatient settlements in a month that raise a warning" in out
    assert "Seven unfiled cross-region inpatient stays" in out  # the fixture's description
    example = json.loads(out[out.index("\n{", out.index("Example alert")):])
    assert example["schema"] == "alert/v1" and example["rule_id"] == "unfiled_cross_region"
    fixture = json.loads((ROOT / "rules/builtin/unfiled_cross_region.fixture.json")
                         .read_text(encoding="utf-8"))
    assert subset_diff(fixture["expect"][0], example) == []


@pytest.mark.parametrize("rule_id", sorted(discover()))
def test_explain_works_for_every_rule(capsys, rule_id):
    code, out, _ = _run(capsys, "explain", rule_id)
    assert code == 0 and "Parameters" in out and '"schema": "alert/v1"' in out


def test_explain_an_unknown_rule_lists_the_known_ones(capsys):
    code, _, err = _run(capsys, "explain", "no_such_rule")
    assert code == 2
    assert "unknown rule id(s) no_such_rule" in err
    assert all(rule_id in err for rule_id in discover())


def test_explain_markdown_is_the_readme_section(capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code, out, _ = _run(capsys, "explain", "unfiled_cross_region", "--markdown")
    assert code == 0 and out.splitlines() == markdown_lines("unfiled_cross_region", discover())
    for line in out.splitlines():
        assert line in readme


# ------------------------------------------------------------------------------ test

def test_every_builtin_rule_passes(capsys):
    code, out, _ = _run(capsys, "test")
    assert code == 0, out
    for rule_id in discover():
        assert f"PASS {rule_id}" in out.splitlines()
    assert out.splitlines()[-1] == f"{len(discover())} passed"


def test_a_wrong_expectation_fails_with_a_readable_diff(capsys, tmp_path):
    package = _package(tmp_path)
    wrong, extra = _name(), _name()
    new_rule(wrong, package)
    new_rule(extra, package)
    path = package / f"{wrong}.fixture.json"
    fixture = json.loads(path.read_text(encoding="utf-8"))
    fixture["expect"][0]["evidence"]["settlement_count"] = 4
    fixture["expect"][0]["evidence"]["nights"] = 2
    path.write_text(json.dumps(fixture), encoding="utf-8")
    path = package / f"{extra}.fixture.json"
    fixture = json.loads(path.read_text(encoding="utf-8"))
    fixture["expect"] = []
    path.write_text(json.dumps(fixture), encoding="utf-8")

    code, out, _ = _run(capsys, "test", wrong, extra, "--dir", str(package))
    assert code == 1
    assert f"FAIL {wrong}" in out and f"FAIL {extra}" in out
    assert "[fixture] expected alert 1 not produced:" in out
    assert "closest produced alert: fw-" in out
    assert ".evidence.settlement_count: expected 4, got 3" in out
    assert ".evidence.nights: missing" in out
    assert "[fixture] unexpected alert:" in out
    assert f'+  "rule_id": "{extra}",' in out
    assert out.splitlines()[-1] == "0 passed, 2 failed"


def test_test_an_unknown_rule_is_a_usage_error(capsys):
    code, _, err = _run(capsys, "test", "unfiled_cross_region", "no_such_rule")
    assert code == 2 and "unknown rule id(s) no_such_rule" in err


# ------------------------------------------------------------------------------ new

def test_new_scaffolds_a_rule_that_passes_and_refuses_to_overwrite(capsys, tmp_path):
    package = _package(tmp_path)
    name = _name()
    code, out, _ = _run(capsys, "new", name, "--dir", str(package))
    assert code == 0
    assert {p.name for p in package.iterdir()} >= {"__init__.py", f"{name}.py",
                                                    f"{name}.fixture.json"}
    fixture = json.loads((package / f"{name}.fixture.json").read_text(encoding="utf-8"))
    for event in fixture["events"]:
        assert parse(json.dumps(event)).schema == "settlement/v1"

    code, out, _ = _run(capsys, "test", name, "--dir", str(package))
    assert (code, out.splitlines()) == (0, [f"PASS {name}", "1 passed"])
    code, out, _ = _run(capsys, "list", "--dir", str(package))
    assert code == 0 and re.search(rf"^{name} +institution +dir:", out, re.M)
    assert "min_settlements=200" in out
    code, out, _ = _run(capsys, "explain", name, "--dir", str(package))
    assert code == 0 and '"settlement_count": 3' in out

    before = (package / f"{name}.py").read_text(encoding="utf-8")
    code, _, err = _run(capsys, "new", name, "--dir", str(package))
    assert code == 2 and "already exists" in err
    (package / "helpers.py").write_text("X = 1\n", encoding="utf-8")
    code, _, err = _run(capsys, "new", "helpers", "--dir", str(package))
    assert code == 2 and "will not overwrite" in err
    assert (package / "helpers.py").read_text(encoding="utf-8") == "X = 1\n"
    assert (package / f"{name}.py").read_text(encoding="utf-8") == before


@pytest.mark.parametrize("name, why", [
    ("Visits", "not a valid rule name"), ("ab", "not a valid rule name"),
    ("9lives", "not a valid rule name"), ("visit-count", "not a valid rule name"),
    ("x" * 65, "not a valid rule name"), ("while", "Python keyword"),
    ("unfiled_cross_region", "already exists"),
])
def test_new_rejects_bad_names(capsys, tmp_path, name, why):
    code, _, err = _run(capsys, "new", name, "--dir", str(tmp_path / "pkg"))
    assert code == 2 and why in err
    assert not (tmp_path / "pkg").exists()


def test_new_writes_into_rules_builtin_by_default(capsys, monkeypatch, tmp_path):
    # Point rules.builtin's path at a scratch directory: nothing is left in the repo.
    from rules import builtin

    monkeypatch.setattr(builtin, "__path__", [str(tmp_path)])
    name = _name()
    code, out, _ = _run(capsys, "new", name)
    assert code == 0 and (tmp_path / f"{name}.py").exists()
    assert not (ROOT / "rules" / "builtin" / f"{name}.py").exists()


def test_a_scaffolded_rule_fires_in_replay_when_installed(capsys, tmp_path):
    """Shipped as a package (entry point group fundwatch.rules), the scaffold is a rule
    like any other: ``rules list`` shows it, ``fundwatch replay`` of its fixture's events
    with the fixture's parameters produces the expected alert."""
    if not FUNDWATCH.exists():
        pytest.skip("run with the venv's python (its fundwatch script is needed)")
    site = tmp_path / "site"
    package = _package(site)
    name = _name()
    assert _run(capsys, "new", name, "--dir", str(package))[0] == 0
    declare_entry_points(site, package, [name])
    config = tmp_path / "fw.toml"
    config.write_text(f"[rules.{name}]\nmin_settlements = 3\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDWATCH_")}
    env.update(PYTHONPATH=str(site), FUNDWATCH_CONFIG=str(config))

    def fundwatch(*argv):
        done = subprocess.run([str(FUNDWATCH), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    listed = fundwatch("rules", "list")
    assert re.search(rf"^{name} +institution +entry point:{package.name}.{name} ", listed, re.M)
    assert "min_settlements=3 (default 200)" in listed
    fundwatch("rules", "events", name, "--out", "events.jsonl")
    summary = fundwatch("replay", "events.jsonl", "--alerts-out", "alerts.jsonl")
    assert f"1 alerts: {name} 1" in summary
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    expected = scaffold_fixture(name)["expect"][0]
    assert [subset_diff(expected, a) for a in alerts] == [[]]


# ------------------------------------------------------------------------------ events

def test_events_writes_the_fixture_as_json_lines(capsys, tmp_path):
    out_file = tmp_path / "e.jsonl"
    pools = tmp_path / "pools.yaml"
    code, _, _ = _run(capsys, "events", "pool_deficit", "--out", str(out_file),
                      "--pools-out", str(pools))
    assert code == 0
    fixture = json.loads((ROOT / "rules/builtin/pool_deficit.fixture.json")
                         .read_text(encoding="utf-8"))
    lines = out_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == fixture["events"]
    from rules.registry import Registry

    assert Registry.load(pools) is not None
