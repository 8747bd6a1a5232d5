"""Notifications delivered for real: Apprise's JSON webhook plugin POSTing to a local
HTTP endpoint this test starts, over a real SQLite file and real PostgreSQL.

Time is the one thing these tests drive by hand: the dispatcher takes a clock, and
the "hour" of outage is an hour of that clock, so the test runs in seconds. Every
send is still a real HTTP request to a real server that really refuses (503)."""
from __future__ import annotations

import re
import threading

import pytest

from infra.config import ConfigError, Settings
from rules.alerts import make_alert, month_window
from sinks.notify import Dispatcher, outbox_status
from sinks.privacy import Pseudonymizer
from sinks.routing import Routing
from sinks.webhook import WebhookReceiver

SECRET = "test-pseudonym-key-0123456789"


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def centers():
    """Two supervision centers' webhooks: Maoming (treatment side) and Guangxi."""
    with WebhookReceiver("/maoming") as maoming, WebhookReceiver("/guangxi") as guangxi:
        yield maoming, guangxi


def routing_for(maoming: WebhookReceiver, guangxi: WebhookReceiver | None = None,
                **route_options) -> Routing:
    routes = [{"name": "maoming", "regions": ["440900"], "urls": [maoming.apprise_url],
               **route_options}]
    if guangxi is not None:
        routes.append({"name": "guangxi", "regions": ["45"], "urls": [guangxi.apprise_url]})
    return Routing.from_config({"routes": routes, "retry_base_s": 5, "retry_max_s": 300},
                               "test", secret=SECRET)


def joint_alert(severity: str = "warning", extra_person: bool = False) -> dict:
    persons = [{"person_id": "P450100000017", "insured_region": "450100", "settlements": 4,
                "amount": "52000.00", "name": "韦小宝"},
               {"person_id": "P450100000023", "insured_region": "450100", "settlements": 2,
                "amount": "18000.00"}]
    if extra_person:
        persons.append({"person_id": "P450100000099", "insured_region": "450100",
                        "settlements": 1, "amount": "9000.00"})
    return make_alert(
        "cross_province_surge", severity, "institution", "H440900001",
        regions=["440900", "450100"], window=month_window("2025-05"),
        detected_at="2025-05-20T00:00:00+08:00",
        summary="H440900001: cross-province cost +35% (P450100000017 leads the increase)",
        evidence={"current": "180000.00", "baseline": "133000.00", "growth": 0.35,
                  "persons": persons, "settlement_count": 41},
        settlement_ids=["S-GX-1", "S-GX-2"], review="joint",
        duties={"440900": "On-site inspection of H440900001's care and records",
                "450100": "Verify enrolment and filings of the listed persons insured here"})


def pool_alert(n: int, severity: str = "warning") -> dict:
    return make_alert("pool_deficit", severity, "pool", f"440900:resident-{n}",
                      regions=["440900"], window=month_window("2025-03"),
                      detected_at=f"2025-04-01T00:{n % 60:02d}:00+08:00",
                      summary=f"deficit number {n}", evidence={"deficit": str(1000 + n)})


def test_joint_review_reaches_both_sides_each_with_its_own_duty(store, centers):
    maoming, guangxi = centers
    alert = joint_alert()
    store.upsert(alert)
    report = Dispatcher(store, routing_for(maoming, guangxi)).run_once()
    assert (report.notifications_created, report.messages_sent) == (2, 2)

    (to_maoming,) = maoming.messages()
    (to_guangxi,) = guangxi.messages()
    assert "your part:\n  440900: On-site inspection" in to_maoming["message"]
    assert "your part:\n  450100: Verify enrolment" in to_guangxi["message"]
    # Each sees the other side exists, but is asked to do only its own part.
    assert "other side(s): 450100" in to_maoming["message"]
    assert to_maoming["type"] == "warning" and "WARNING cross_province_surge" in to_maoming["title"]

    # Privacy: no raw person id, no name, no settlement id leaves through either
    # channel; the insured side sees its persons as keyed pseudonyms.
    pseudonym = Pseudonymizer(SECRET)
    for message in (to_maoming, to_guangxi):
        text = message["title"] + message["message"]
        for raw in ("P450100000017", "P450100000023", "韦小宝", "S-GX-1"):
            assert raw not in text
        assert not re.search(r"P4501\d+", text)
    assert pseudonym("P450100000017") in to_guangxi["message"]
    assert pseudonym("P450100000017") in to_guangxi["message"].split("\n")[0]  # summary too
    # The store keeps what an auditor needs.
    assert store.get(alert["alert_id"])["evidence"]["persons"][0]["person_id"] == "P450100000017"


def test_redelivered_alert_and_more_evidence_notify_once_escalation_again(store, centers):
    maoming, _ = centers
    dispatcher = Dispatcher(store, routing_for(maoming))
    alert = joint_alert()
    for _ in range(3):  # redelivery from the topic, a replay
        store.upsert(alert)
        dispatcher.run_once()
    store.upsert(joint_alert(extra_person=True))  # same finding, more evidence
    dispatcher.run_once()
    assert len(maoming.messages()) == 1

    store.upsert(joint_alert("critical", extra_person=True))  # escalation
    dispatcher.run_once()
    dispatcher.run_once()
    titles = [m["title"] for m in maoming.messages()]
    assert len(titles) == 2 and "CRITICAL" in titles[1]


def test_an_alerts_old_revisions_brought_back_tell_nobody_again(store, centers):
    # A stream processed again into this store brings the alert's revisions back in
    # order: the warning the channel never heard (it was told at critical), then the
    # critical it had. Before, the center got the stale warning as a new message.
    maoming, _ = centers
    dispatcher = Dispatcher(store, routing_for(maoming))
    warning, critical = joint_alert(), joint_alert("critical", extra_person=True)
    store.upsert(warning)
    store.upsert(critical)
    dispatcher.run_once()
    assert [m["title"].split()[1] for m in maoming.messages()] == ["CRITICAL"]
    for again in (warning, critical):
        store.upsert(again)
        dispatcher.run_once()
    assert len(maoming.messages()) == 1


def test_channel_down_for_an_hour_gets_everything_once_when_back(store, centers):
    maoming, guangxi = centers
    clock = Clock()
    dispatcher = Dispatcher(store, routing_for(maoming, guangxi), clock=clock)
    maoming.refusing = True
    stored = []
    # An hour of outage on Maoming's channel, a pass every 10 s, alerts arriving
    # throughout; Guangxi's channel is up and must not be held back by it.
    for step in range(361):
        if step % 12 == 0:
            alert = pool_alert(step // 12, "critical" if step % 48 == 0 else "warning")
            store.upsert(alert)
            stored.append(alert["alert_id"])
        if step == 100:
            store.upsert(joint_alert())
            stored.append(joint_alert()["alert_id"])
        dispatcher.run_once()
        clock.t += 10
    assert maoming.messages() == []
    assert len(guangxi.messages()) == 1
    # Backoff, not hammering: the channel as a whole is retried after 5, 10, 20, ...
    # up to 300 s, so an hour costs the refusing endpoint about 17 requests (6 while
    # doubling, then one per 5 minutes), not one per pass and notification.
    assert 14 <= maoming.refused <= 20, maoming.refused
    (status,) = [s for s in outbox_status(store) if s["channel"] == "maoming#1"]
    assert status["pending"] == len(stored) and "503" in (status["last_error"] or "")

    maoming.refusing = False
    for _ in range(40):  # the channel is back: within one retry interval, all of it
        dispatcher.run_once()
        clock.t += 10
    received = [re.search(r"alert: (fw-[0-9a-f]+)", m["message"]).group(1)
                for m in maoming.messages()]
    assert sorted(received) == sorted(stored)  # everything, each once
    assert outbox_status(store)[1]["pending"] == 0


def test_burst_is_folded_into_digests_and_no_alert_is_dropped(store, centers):
    maoming, _ = centers
    clock = Clock()
    routing = routing_for(maoming, max_messages=3, per_s=60, digest_size=10)
    dispatcher = Dispatcher(store, routing, clock=clock)
    for n in range(2):
        store.upsert(pool_alert(n))
    dispatcher.run_once()
    assert len(maoming.messages()) == 2  # under the limit: one message each

    burst = [pool_alert(n) for n in range(2, 27)]
    store.upsert_many(burst)
    dispatcher.run_once()
    dispatcher.run_once()  # the limit holds within the window
    messages = maoming.messages()
    assert len(messages) == 3 and messages[2]["title"].startswith("[fundwatch] digest: 10 alerts")

    clock.t += 61  # the window has moved on: three more messages may go
    dispatcher.run_once()
    clock.t += 61
    dispatcher.run_once()
    messages = maoming.messages()
    named = [a for m in messages for a in set(re.findall(r"fw-[0-9a-f]{24}", m["message"]))]
    assert sorted(named) == sorted(a["alert_id"] for a in [pool_alert(n) for n in range(27)])
    assert len(messages) == 5  # 2 single + digests of 10, 10, 5
    assert store.count() == 27


def test_two_dispatchers_never_send_the_same_notification(store, centers):
    maoming, _ = centers
    routing = routing_for(maoming)
    store.upsert_many([pool_alert(n) for n in range(40)])
    dispatchers = [Dispatcher(store, routing) for _ in range(3)]
    barrier = threading.Barrier(3)

    def work(d):
        barrier.wait()
        for _ in range(3):
            d.run_once()

    threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    notified = [re.search(r"notification: (n-\d+)", m["message"]).group(1)
                for m in maoming.messages()]
    assert len(notified) == 40 and len(set(notified)) == 40


def test_a_dispatcher_that_dies_mid_send_loses_nothing(store, centers):
    """A dispatcher that claimed notifications and died (its lease never released):
    another takes them over once the lease has run out."""
    maoming, _ = centers
    clock = Clock()
    routing = routing_for(maoming)
    store.upsert_many([pool_alert(n) for n in range(5)])
    dead = Dispatcher(store, routing, clock=clock)
    dead.route_new_alerts()
    assert len(dead._claim()) == 5  # ... and then the process is killed

    survivor = Dispatcher(store, routing, clock=clock)
    assert survivor.run_once().messages_sent == 0  # still leased to the dead one
    clock.t += routing.lease_s + 1
    assert survivor.run_once().messages_sent == 5
    assert len(maoming.messages()) == 5


def test_severity_filter_and_unserved_regions(store, centers):
    maoming, _ = centers
    routing = Routing.from_config({"routes": [
        {"name": "maoming", "regions": ["440900"], "urls": [maoming.apprise_url],
         "min_severity": "critical"}]}, "test", secret=SECRET)
    dispatcher = Dispatcher(store, routing)
    store.upsert(pool_alert(1, "warning"))
    store.upsert(make_alert("pool_deficit", "critical", "pool", "330100:employee",
                            regions=["330100"], window=month_window("2025-03"),
                            detected_at="2025-04-01T00:00:00+08:00", summary="Hangzhou",
                            evidence={}))
    report = dispatcher.run_once()
    assert report.alerts_routed == 2 and report.notifications_created == 0
    assert report.unserved == 1  # Hangzhou: no route; the Maoming warning: below the filter
    store.upsert(pool_alert(1, "critical"))  # the warning escalates: now it passes
    dispatcher.run_once()
    assert [m["type"] for m in maoming.messages()] == ["failure"]


def test_notify_config_errors_name_file_key_and_problem(tmp_path):
    def load(text: str, **env):
        path = tmp_path / "fundwatch.toml"
        path.write_text(text, encoding="utf-8")
        return Settings.load(env={"FUNDWATCH_CONFIG": str(path), **env})

    route = '[[notify.routes]]\nname = "maoming"\nregions = ["440900"]\n' \
            'urls = ["json://127.0.0.1:9/x"]\n'
    with pytest.raises(ConfigError, match=r"fundwatch.toml: \[notify\] has routes but no "
                                          r"pseudonym key: set FUNDWATCH_NOTIFY_SECRET"):
        load(route)
    settings = load(route, FUNDWATCH_NOTIFY_SECRET=SECRET)
    assert [r.name for r in settings.routing().routes] == ["maoming"]
    assert SECRET not in repr(settings) and "json://" not in repr(settings)
    cases = {
        route.replace('"440900"', '"4409"'): "'maoming': regions: '4409' is not a 2-digit",
        route.replace("json://", "nosuchscheme://"): "'maoming': urls[1] (scheme "
                                                     "'nosuchscheme') is not a URL Apprise",
        route + 'min_severity = "urgent"\n': "'maoming': min_severity = 'urgent' must be",
        route + "max_messages = 0\n": "'maoming': max_messages = 0 must be",
        route + "colour = 1\n": "'maoming': colour is not a known route setting",
        route + route: "name 'maoming' is used twice",
        "[notify]\nretry_max_s = -1\n": "[notify].retry_max_s = -1 must be a positive",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "fundwatch.toml"))
                           + ".*" + re.escape(message)):
            load(text, FUNDWATCH_NOTIFY_SECRET=SECRET)


def test_person_and_settlement_alerts_leave_without_ids_or_names(store, centers):
    maoming, _ = centers
    person = make_alert(
        "overlapping_stay", "warning", "person", "440900R0000388",
        regions=["440900"], window=month_window("2025-04"),
        detected_at="2025-04-12T00:00:00+08:00",
        summary="440900R0000388 (李四) inpatient at H440900001 and H440100002 at once",
        evidence={"person_id": "440900R0000388", "name": "李四", "stays": [
            {"settlement_id": "H440900001202504050001", "days": 6},
            {"settlement_id": "H440100002202504070003", "days": 4}], "overlap_days": 3},
        settlement_ids=["H440900001202504050001", "H440100002202504070003"],
        duties={"440900": "Check whether 440900R0000388 was in the bed"})
    bed = make_alert(
        "phantom_bed", "critical", "settlement", "H440900001202504050001",
        regions=["440900"], window=month_window("2025-04"),
        detected_at="2025-04-12T00:00:00+08:00",
        summary="stay H440900001202504050001 scores 0.97 for phantom bed occupancy",
        evidence={"score": 0.97, "patient": {"person_id": "440900R0000388",
                                             "patient_name": "李四"}},
        settlement_ids=["H440900001202504050001"])
    store.upsert_many([person, bed])
    Dispatcher(store, routing_for(maoming)).run_once()
    messages = maoming.messages()
    assert len(messages) == 2
    pseudonym = Pseudonymizer(SECRET)("440900R0000388")
    for message in messages:
        text = message["title"] + "\n" + message["message"]
        for secret in ("440900R0000388", "李四", "H440900001202504050001",
                       "H440100002202504070003"):
            assert secret not in text
    by_rule = {m["title"].split()[2]: m for m in messages}
    assert f"person {pseudonym}" in by_rule["overlapping_stay"]["title"]
    assert "Check whether " + pseudonym + " was in the bed" in by_rule["overlapping_stay"][
        "message"]
    assert "[name withheld]" in by_rule["overlapping_stay"]["message"]
    assert "overlap_days=3" in by_rule["overlapping_stay"]["message"]
    assert "settlement [id in the alert store]" in by_rule["phantom_bed"]["title"]
    assert "score=0.97" in by_rule["phantom_bed"]["message"]


def test_a_region_added_to_a_joint_review_is_told_once(store, centers):
    """Guangxi's provincial route already told 450100; the finding grows to name
    450300 too: only the new side is told, and only once."""
    _, guangxi = centers
    dispatcher = Dispatcher(store, routing_for(centers[0], guangxi))
    first = joint_alert()
    store.upsert(first)
    dispatcher.run_once()
    grown = {**first, "regions": ["440900", "450100", "450300"],
             "duties": {**first["duties"], "450300": "Verify enrolment (Guilin)"}}
    store.upsert(grown)
    dispatcher.run_once()
    store.upsert(grown)
    dispatcher.run_once()
    messages = guangxi.messages()
    assert len(messages) == 2
    assert "your part:\n  450100: Verify enrolment" in messages[0]["message"]
    assert "your part:\n  450300: Verify enrolment (Guilin)" in messages[1]["message"]
    assert "450100" in messages[1]["message"].split("other side(s):")[1]
    assert store.sides(first["alert_id"])["450300"]["status"] == "open"


def test_the_readme_routing_example_is_a_valid_config(tmp_path):
    """The README shows a center how to configure e-mail, DingTalk, WeCom, Slack and a
    webhook; that example must load as it stands (Apprise accepts every URL)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Alert delivery to the supervision centers")[1]
    example = example.split("```toml\n")[1].split("```")[0]
    path = tmp_path / "fundwatch.toml"
    path.write_text(example.replace('notify_secret = "…"', f'notify_secret = "{SECRET}"'),
                    encoding="utf-8")
    routing = Settings.load(env={"FUNDWATCH_CONFIG": str(path)}).routing()
    assert [(r.name, r.regions, len(r.urls)) for r in routing.routes] == [
        ("guangdong", ("44",), 2), ("maoming", ("440900",), 2), ("guangxi", ("45",), 1)]
    schemes = {url.split("://")[0] for r in routing.routes for url in r.urls}
    assert schemes == {"mailto", "dingtalk", "wecombot", "json", "slack"}
    joint = joint_alert()
    assert [(r.channel, r.sides) for r in routing.recipients(joint)] == [
        ("guangdong#1", ("440900",)), ("guangdong#2", ("440900",)),
        ("maoming#1", ("440900",)), ("maoming#2", ("440900",)), ("guangxi#1", ("450100",))]
