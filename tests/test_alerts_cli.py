"""``fundwatch alerts`` as a supervision center scripts it: real processes, a real
SQLite store, and notifications delivered to a real local webhook."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson

from rules.alerts import make_alert, month_window
from sinks.store import AlertStore
from sinks.webhook import WebhookReceiver

SECRET = "cli-test-pseudonym-key-0123"


def fundwatch(tmp_path, *args: str, config: str | None = None, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDWATCH_")}
    env.update(FUNDWATCH_DB_URL=f"sqlite:///{tmp_path / 'alerts.db'}", FUNDWATCH_USER="tester",
               **env_extra)
    if config:
        env["FUNDWATCH_CONFIG"] = config
    return subprocess.run([sys.executable, "-m", "streams.cli", "alerts", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def joint() -> dict:
    return make_alert("cross_province_surge", "critical", "institution", "H440900001",
                      regions=["440900", "450100"], window=month_window("2025-05"),
                      detected_at="2025-05-20T00:00:00+08:00", summary="surge at H440900001",
                      evidence={"persons": [{"person_id": "P450100000017",
                                             "insured_region": "450100"}]},
                      review="joint", duties={"440900": "On-site inspection",
                                              "450100": "Verify enrolment"})


def single() -> dict:
    return make_alert("unfiled_cross_region", "warning", "institution", "H440100001",
                      regions=["440100"], window=month_window("2025-03"),
                      detected_at="2025-03-09T10:00:00+08:00", summary="6 unfiled stays",
                      evidence={"settlement_count": 6})


def test_import_list_ack_resolve_a_joint_review(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(joint()), orjson.dumps(single()), b"",
                                 b"{broken", orjson.dumps({**single(), "severity": "urgent"}),
                                 orjson.dumps(joint())]) + b"\n")
    result = fundwatch(tmp_path, "import", str(path))
    assert result.returncode == 1  # two lines rejected, each reported, the rest loaded
    assert result.stdout.splitlines()[0].startswith("4\tnot JSON")
    assert result.stdout.splitlines()[1] == "5\tseverity must be info, warning or critical"
    assert "2 inserted, 0 updated, 1 unchanged, 2 rejected" in result.stderr

    listed = fundwatch(tmp_path, "list", "--region", "45")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert line.startswith(joint()["alert_id"]) and "[450100:open 440900:open]" in line

    aid = joint()["alert_id"]
    refused = fundwatch(tmp_path, "ack", aid)
    assert refused.returncode == 1 and "name yours with --region" in refused.stderr
    refused = fundwatch(tmp_path, "ack", aid, "--region", "330100")
    assert refused.returncode == 1 and "no side in region 330100" in refused.stderr

    done = fundwatch(tmp_path, "ack", aid, "--region", "450100")
    assert done.returncode == 0 and done.stdout.strip() == f"{aid} 450100: acknowledged"
    no_note = fundwatch(tmp_path, "resolve", aid, "--region", "450100")
    assert no_note.returncode == 2 and "--note" in no_note.stderr
    done = fundwatch(tmp_path, "resolve", aid, "--region", "450100", "--note",
                     "enrolment verified", "--by", "gx.wang")
    assert done.returncode == 0, done.stderr
    again = fundwatch(tmp_path, "ack", aid, "--region", "450100")
    assert again.returncode == 1 and "already resolved" in again.stderr

    only_open = fundwatch(tmp_path, "list", "--status", "open", "--json")
    rows = [orjson.loads(line) for line in only_open.stdout.splitlines()]
    assert {r["alert"]["alert_id"] for r in rows} == {aid, single()["alert_id"]}
    assert fundwatch(tmp_path, "list", "--region", "45", "--status", "open").stdout == ""
    assert fundwatch(tmp_path, "list", "--rule", "unfiled_cross_region",
                     "--status", "open").stdout.startswith(single()["alert_id"])

    shown = fundwatch(tmp_path, "show", aid, FUNDWATCH_NOTIFY_SECRET=SECRET)
    # The severity it was closed at: only a finding above it reopens the side.
    assert f"450100  resolved at {joint()['severity']}" in shown.stdout
    assert "440900  open " in shown.stdout
    assert "by gx.wang: enrolment verified" in shown.stdout
    assert "by tester" in shown.stdout  # the ack, by $FUNDWATCH_USER
    assert "pseudonyms in notifications:\n  psn-" in shown.stdout

    store = AlertStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    assert store.sides(aid)["440900"]["status"] == "open"  # the other side untouched
    store.dispose()


def test_deliver_once_and_outbox_through_the_configured_route(tmp_path):
    with WebhookReceiver("/maoming") as center:
        config = tmp_path / "fundwatch.toml"
        config.write_text(f'[[notify.routes]]\nname = "maoming"\nregions = ["440900"]\n'
                          f'urls = ["{center.apprise_url}"]\n', encoding="utf-8")
        path = tmp_path / "alerts.jsonl"
        path.write_bytes(orjson.dumps(joint()) + b"\n" + orjson.dumps(single()) + b"\n")
        assert fundwatch(tmp_path, "import", str(path)).returncode == 0

        no_key = fundwatch(tmp_path, "deliver", "--once", config=str(config))
        assert no_key.returncode == 2 and "FUNDWATCH_NOTIFY_SECRET" in no_key.stderr
        assert "Traceback" not in no_key.stderr

        sent = fundwatch(tmp_path, "deliver", "--once", config=str(config),
                         FUNDWATCH_NOTIFY_SECRET=SECRET)
        assert sent.returncode == 0, sent.stderr
        assert "into 1 notification(s); sent 1 in 1 message(s)" in sent.stdout
        (message,) = center.messages()
        assert "440900: On-site inspection" in message["message"]
        assert "P450100000017" not in message["message"]

        again = fundwatch(tmp_path, "deliver", "--once", config=str(config),
                          FUNDWATCH_NOTIFY_SECRET=SECRET)
        assert "sent 0 in 0 message(s)" in again.stdout and len(center.messages()) == 1
        outbox = fundwatch(tmp_path, "outbox", config=str(config),
                           FUNDWATCH_NOTIFY_SECRET=SECRET)
        assert outbox.stdout.strip() == "maoming#1: 0 pending, 1 sent, 0 superseded"
