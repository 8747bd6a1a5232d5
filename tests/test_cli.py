"""The command line as an operator scripts it: real processes, real files."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import orjson

from tests.factories import dumps, settlement


def fundwatch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_validate_reports_every_broken_line_and_exits_1(tmp_path):
    good = settlement(settlement_id="OK-1")
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([
        dumps(good),
        b"{not json",
        b"",
        dumps({**good, "settlement_id": "BAD-1", "insured_region": "990100"}),
        dumps(good),                                 # exact duplicate: not a rejection
        dumps({**good, "settled_at": "2025-03-01T10:00:00"}),
    ]) + b"\n")
    result = fundwatch("validate", str(path))
    assert result.returncode == 1, result.stderr
    rejected = [line.split("\t") for line in result.stdout.splitlines()
                if not line.startswith("#")]
    assert [(r[0], r[1]) for r in rejected] == [
        ("2", "not_json"), ("4", "invalid_region"), ("6", "datetime_without_offset")]
    assert all(r[2] for r in rejected)


def test_validate_clean_file_exits_0(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(dumps(settlement()) + b"\n")
    result = fundwatch("validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_configuration_error_is_reported_not_raised(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[fundwatch]\nno_such_setting = 1\n")
    result = subprocess.run([sys.executable, "-m", "streams.cli", "validate", str(conf)],
                            capture_output=True, text=True, timeout=60,
                            env={"FUNDWATCH_CONFIG": str(conf), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no_such_setting" in result.stderr and "Traceback" not in result.stderr


def test_simulate_writes_stream_registry_and_truth(tmp_path):
    out = tmp_path / "province.jsonl"
    result = fundwatch("simulate", "--out", str(out), "--days", "3", "--seed", "5")
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) > 1000
    assert (tmp_path / "province.pools.yaml").exists()
    truth = [orjson.loads(t) for t in (tmp_path / "province.truth.jsonl").read_bytes()
             .splitlines()]
    assert truth
    again = tmp_path / "again.jsonl"
    fundwatch("simulate", "--out", str(again), "--days", "3", "--seed", "5")
    assert again.read_bytes() == out.read_bytes()


def test_a_demo_on_a_store_kept_from_an_earlier_run_says_why_it_told_nobody(tmp_path,
                                                                           capsys):
    """With FUNDWATCH_DB_URL the demo keeps the store, and routing never tells a channel
    of an alert twice: a second run's centers get nothing. The summary must say why
    (it used to print 0 messages and nothing more). Real store, real webhook."""
    import asyncio

    from infra.config import Settings
    from rules.alerts import make_alert, month_window
    from sinks.store import AlertStore
    from streams.demo import DemoCenters, _notifications

    url = f"sqlite:///{tmp_path / 'kept.db'}"
    store = AlertStore(url)
    store.upsert(make_alert("pool_deficit", "critical", "pool", "450100:resident",
                            regions=["450100"], window=month_window("2025-03"),
                            detected_at="2025-04-01T00:00:00+08:00",
                            summary="450100:resident spent more than it took in",
                            evidence={"deficit": "1000.00"}))
    store.dispose()
    runs = []
    for _ in range(2):
        centers = DemoCenters(Settings()).start(url)
        try:
            backlog = asyncio.run(centers.drain(30))
            _notifications(centers, backlog)
            runs.append((len(centers.hook.messages()), capsys.readouterr().out))
        finally:
            centers.stop()
    (first_told, first), (second_told, second) = runs
    assert first_told == 1 and "kept from an earlier run" not in first
    assert second_told == 0
    assert "notifications                0   messages" in second
    assert "kept from an earlier run, whose channels were told of 1 alert:" in second
    assert "without FUNDWATCH_DB_URL the demo starts a store of its own" in second


def test_demo_end_to_end_on_a_configured_cluster(broker, tmp_path):
    """`fundwatch demo` against an already running broker: it must use it (start no
    broker of its own), stream, print alerts and a summary that reconciles, exit 0."""
    import os
    import uuid

    tag = uuid.uuid4().hex[:6]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDWATCH_")}
    env.update(FUNDWATCH_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
               FUNDWATCH_TOPIC_PREFIX=f"demo{tag}.", FUNDWATCH_APP_ID=f"demo-{tag}")
    # A store left by an earlier run, its alerts all told: this run starts its own,
    # and its centers are told (below).
    (tmp_path / "out").mkdir()
    earlier = sqlite3.connect(tmp_path / "out" / "alerts.db")
    earlier.execute("create table left_by_an_earlier_run (x)")
    earlier.commit()
    earlier.close()
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--out-dir",  # the default province
         str(tmp_path / "out"), "--timeout", "150"],
        capture_output=True, text=True, timeout=240, env=env, cwd=os.getcwd())
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert f"using the configured cluster {broker.bootstrap_servers}" in out
    assert "embedded broker" not in out
    summary = out.split("── summary")[1]
    assert "unaccounted                0" in summary
    assert "dead-lettered" in summary and "alert store" in summary
    assert (tmp_path / "out" / "alerts.db").exists()
    with sqlite3.connect(tmp_path / "out" / "alerts.db") as store:
        tables = {name for (name,) in store.execute(
            "select name from sqlite_master where type = 'table'")}
    assert "left_by_an_earlier_run" not in tables and "alerts" in tables
    # The province's planted surge shows as a joint review with both sides' duties,
    # and the pool drifting to the capital as a siphon finding.
    joint = summary.split("joint reviews (双地联查)")[1].split("siphon to the capital")[0]
    assert "H440900001" in joint and "440900: On-site inspection" in joint
    assert "450100: Verify enrolment" in joint
    siphon = summary.split("siphon to the capital (虹吸效应)")[1]
    assert "440900:resident" in siphon and "2025-06" in siphon
    # The centers' local webhook received the notifications, all of them (nothing left
    # in the outbox), and what it received names persons only by pseudonym.
    assert "✉ guangdong" in out and "✉ guangxi" in out
    assert ", 0 left in the outbox" in summary
    received = summary.split("as the insured side's channel received it:")[1]
    received = received.split("elapsed")[0]
    assert "review: joint (双地联查)" in received
    assert not re.search(r"\b\d{6}[ER]\d{7}\b", received)  # the simulator's person ids
    # The province's overspending pool, judged against its risk-adjusted standard.
    structural = summary.split("management overspend (管理风险)")[1]
    overspend = [line for line in structural.split("structural risk:")[0].splitlines()
                 if line.strip() and " info " not in line]
    assert len(overspend) >= 1 and all("440300:employee" in line for line in overspend)
    assert "structural share" in structural
    # The auditor's replay of the same stream, offline, gives the live worker's alerts,
    # id and content (every rule, the online model's too), the same scores, no record
    # late live that was not late in the replay; and writes its report.
    replayed = re.search(r"auditor's replay +([\d,]+) +alerts offline .*; ([\d,]+) "
                         r"identical to the store's ([\d,]*\d)", out)
    assert replayed, out[-2000:]
    assert replayed.group(1) == replayed.group(2) == replayed.group(3)
    scores = re.search(r"model scores +([\d,]+) +offline, ([\d,]+) live; ([\d,]+) identical",
                       out)
    assert scores and scores.group(1) == scores.group(2) == scores.group(3), out[-2000:]
    assert re.search(r"late at detection +0 +live, 0 in the replay", out)
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
