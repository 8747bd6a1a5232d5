"""The supervision centers' inbox: every access rule, each with the request that must
be refused and the one that must pass, on real SQLite and real PostgreSQL (the shared
``store`` fixture), through the real application (Starlette's test client speaks
ASGI to it in process: no server, no mock)."""
from __future__ import annotations

import io
import re
import warnings

import pytest

from rules.alerts import make_alert, month_window
from rules.builtin.cross_province_surge import CrossProvinceSurge
from rules.builtin.phantom_bed import PhantomBed
from rules.builtin.pool_balance_low import PoolBalanceLow
from rules.fixtures import final_alerts, load_fixture, run_fixture
from sinks.access import MAX_FAILURES, Users
from sinks.inbox import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note on httpx versions
    from starlette.testclient import TestClient

PASSWORD = "maoming-password-1"


def _rule_alerts(cls) -> list[dict]:
    return final_alerts(run_fixture(cls, load_fixture(cls)))


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict]:
    """Real alerts, made by running the rules over their fixtures."""
    surge, = _rule_alerts(CrossProvinceSurge)  # joint: 440900 treats, 450100 insures
    pools = {a["severity"]: a for a in _rule_alerts(PoolBalanceLow)}
    phantom, = _rule_alerts(PhantomBed)  # 440900, names person P440900RX
    hunan = make_alert("unfiled_cross_region", "warning", "institution", "H430100001",
                       regions=["430100"], window=month_window("2025-03"),
                       detected_at="2025-03-09T10:00:00+08:00", summary="Changsha's own",
                       evidence={"settlement_count": 1}, settlement_ids=["S-HN-1"])
    return {"surge": surge, "pool_low": pools["critical"],  # sides 440900 and 440100
            "surplus": pools["info"],  # 441500 only
            "phantom": phantom, "hunan": hunan}


@pytest.fixture
def inbox(store, alerts):
    store.upsert_many(list(alerts.values()))
    users = Users(store)
    tokens = {
        "maoming": users.add("maoming", region="440900", password=PASSWORD),
        "nanning": users.add("nanning", region="450100"),
        "guangzhou": users.add("guangzhou", region="440100"),
        "guangdong": users.add("guangdong", region="44"),  # a provincial center
        "auditor": users.add("auditor", region="44", role="auditor"),
    }
    with TestClient(create_app(store, poll_s=60)) as client:
        client.tokens = tokens
        client.store = store
        client.alerts = alerts
        yield client


def _auth(client, who: str) -> dict:
    return {"Authorization": f"Bearer {client.tokens[who]}"}


def _ids(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {row["alert"]["alert_id"] for row in response.json()}


def _id(client, name: str) -> str:
    return client.alerts[name]["alert_id"]


def _statuses(client, name: str) -> dict[str, str]:
    return {r: s["status"] for r, s in client.store.sides(_id(client, name)).items()}


# ── 401: no token, a wrong token ────────────────────────────────────────────


def test_the_api_needs_a_valid_token(inbox):
    surge = _id(inbox, "surge")
    assert inbox.get("/api/alerts").status_code == 401
    assert inbox.get("/api/alerts", headers={"Authorization": "Bearer fw_forged"}
                     ).status_code == 401
    assert inbox.get("/api/alerts", headers={"Authorization": inbox.tokens["maoming"]}
                     ).status_code == 401  # not a Bearer header
    assert inbox.get(f"/api/alerts/{surge}").status_code == 401
    refused = inbox.post(f"/api/alerts/{surge}/ack", json={"note": "x"})
    assert refused.status_code == 401
    assert _statuses(inbox, "surge") == {"440900": "open", "450100": "open"}
    # ... and with the token it passes.
    assert inbox.get("/api/alerts", headers=_auth(inbox, "maoming")).status_code == 200
    ok = inbox.post(f"/api/alerts/{surge}/ack", json={"note": "x"},
                    headers=_auth(inbox, "maoming"))
    assert ok.status_code == 200 and ok.json()["sides"] == {"440900": "acknowledged"}


# ── a center sees only alerts with a region under its own ──────────────────


def test_a_center_sees_only_alerts_naming_a_region_under_its_own(inbox):
    a = {k: _id(inbox, k) for k in inbox.alerts}
    assert _ids(inbox.get("/api/alerts", headers=_auth(inbox, "maoming"))) == {
        a["surge"], a["pool_low"], a["phantom"]}
    assert _ids(inbox.get("/api/alerts", headers=_auth(inbox, "nanning"))) == {a["surge"]}
    assert _ids(inbox.get("/api/alerts", headers=_auth(inbox, "guangzhou"))) == {a["pool_low"]}
    # A provincial center sees every region of its province, and no other province.
    assert _ids(inbox.get("/api/alerts", headers=_auth(inbox, "guangdong"))) == {
        a["surge"], a["pool_low"], a["phantom"], a["surplus"]}
    # Asking for another region by the filter does not widen what a center sees.
    assert _ids(inbox.get("/api/alerts?region=43", headers=_auth(inbox, "guangdong"))) == set()
    assert _ids(inbox.get("/api/alerts?region=45", headers=_auth(inbox, "maoming"))) == set()
    # A filter inside its region narrows it.
    assert _ids(inbox.get("/api/alerts?region=441500", headers=_auth(inbox, "guangdong"))
                ) == {a["surplus"]}
    assert _ids(inbox.get("/api/alerts?rule_id=phantom_bed&severity=critical",
                          headers=_auth(inbox, "maoming"))) == {a["phantom"]}
    assert inbox.get("/api/alerts?severity=urgent",
                     headers=_auth(inbox, "maoming")).status_code == 400


def test_the_list_gives_each_sides_status_and_status_filters_the_callers_side(inbox):
    surge = _id(inbox, "surge")
    assert inbox.post(f"/api/alerts/{surge}/ack", json={},
                      headers=_auth(inbox, "nanning")).status_code == 200
    rows = inbox.get("/api/alerts", headers=_auth(inbox, "maoming")).json()
    sides = {r["alert"]["alert_id"]: r["sides"] for r in rows}[surge]
    assert {r: s["status"] for r, s in sides.items()} == {"440900": "open",
                                                           "450100": "acknowledged"}
    # status= is about the caller's own side: Maoming's side is still open.
    assert surge in _ids(inbox.get("/api/alerts?status=open", headers=_auth(inbox, "maoming")))
    assert surge not in _ids(inbox.get("/api/alerts?status=open",
                                       headers=_auth(inbox, "nanning")))


# ── another region's alert answers 404 ──────────────────────────────────────


def test_another_regions_alert_is_not_found(inbox):
    phantom = _id(inbox, "phantom")  # Maoming's alone
    assert inbox.get(f"/api/alerts/{phantom}", headers=_auth(inbox, "nanning")
                     ).status_code == 404
    refused = inbox.post(f"/api/alerts/{phantom}/ack", json={"note": "mine now"},
                         headers=_auth(inbox, "nanning"))
    assert refused.status_code == 404
    assert inbox.post(f"/api/alerts/{_id(inbox, 'hunan')}/ack", json={},
                      headers=_auth(inbox, "guangdong")).status_code == 404
    assert _statuses(inbox, "phantom") == {"440900": "open"}
    assert all(h["actor"] != "nanning" for h in inbox.store.history(phantom))
    # The same requests by the region it belongs to pass.
    got = inbox.get(f"/api/alerts/{phantom}", headers=_auth(inbox, "maoming"))
    assert got.status_code == 200 and got.json()["alert"]["alert_id"] == phantom
    assert inbox.post(f"/api/alerts/{phantom}/ack", json={"note": "on it"},
                      headers=_auth(inbox, "maoming")).status_code == 200
    assert inbox.get("/api/alerts/fw-no-such-alert", headers=_auth(inbox, "maoming")
                     ).status_code == 404


# ── the auditor reads everything and changes nothing ───────────────────────


def test_an_auditor_reads_every_alert_and_is_refused_every_change(inbox):
    assert _ids(inbox.get("/api/alerts", headers=_auth(inbox, "auditor"))) == {
        a["alert_id"] for a in inbox.alerts.values()}  # its region 44 does not limit it
    hunan = _id(inbox, "hunan")
    assert inbox.get(f"/api/alerts/{hunan}", headers=_auth(inbox, "auditor")).status_code == 200
    for action in ("ack", "resolve", "dismiss"):
        refused = inbox.post(f"/api/alerts/{hunan}/{action}", json={"note": "audit"},
                             headers=_auth(inbox, "auditor"))
        assert refused.status_code == 403, refused.text
    assert _statuses(inbox, "hunan") == {"430100": "open"}
    assert [h["action"] for h in inbox.store.history(hunan)] == ["opened"]
    assert inbox.post("/api/alerts/fw-no-such-alert/ack", json={},
                      headers=_auth(inbox, "auditor")).status_code == 404


# ── 409: a transition the lifecycle refuses ────────────────────────────────


def test_a_transition_the_lifecycle_refuses_is_a_conflict(inbox):
    phantom = _id(inbox, "phantom")
    no_note = inbox.post(f"/api/alerts/{phantom}/resolve", json={},
                         headers=_auth(inbox, "maoming"))
    assert no_note.status_code == 400 and "note" in no_note.json()["error"]
    done = inbox.post(f"/api/alerts/{phantom}/resolve", json={"note": "patient was absent; "
                      "referred to the public security bureau"}, headers=_auth(inbox, "maoming"))
    assert done.status_code == 200 and done.json()["sides"] == {"440900": "resolved"}
    again = inbox.post(f"/api/alerts/{phantom}/ack", json={}, headers=_auth(inbox, "maoming"))
    assert again.status_code == 409 and "already resolved" in again.json()["error"]
    other = inbox.post(f"/api/alerts/{phantom}/dismiss", json={"note": "changed my mind"},
                       headers=_auth(inbox, "maoming"))
    assert other.status_code == 409
    assert _statuses(inbox, "phantom") == {"440900": "resolved"}


# ── a joint review, acted on by both sides; neither changes the other's ────


def test_a_joint_review_is_acted_on_by_both_sides_each_only_its_own(inbox):
    surge = _id(inbox, "surge")
    ack = inbox.post(f"/api/alerts/{surge}/ack", json={"note": "inspection booked"},
                     headers=_auth(inbox, "maoming"))
    assert ack.status_code == 200 and ack.json()["sides"] == {"440900": "acknowledged"}
    assert _statuses(inbox, "surge") == {"440900": "acknowledged", "450100": "open"}
    done = inbox.post(f"/api/alerts/{surge}/resolve",
                      json={"note": "enrolment genuine for 4 of 5; 1 referred"},
                      headers=_auth(inbox, "nanning"))
    assert done.status_code == 200 and done.json()["sides"] == {"450100": "resolved"}
    assert _statuses(inbox, "surge") == {"440900": "acknowledged", "450100": "resolved"}
    # Maoming cannot reach Nanning's side however it asks: the side is the caller's
    # region, never a parameter.
    attempt = inbox.post(f"/api/alerts/{surge}/dismiss?region=450100",
                         json={"note": "not ours", "region": "450100"},
                         headers=_auth(inbox, "maoming"))
    assert attempt.status_code == 200 and attempt.json()["sides"] == {"440900": "dismissed"}
    assert _statuses(inbox, "surge") == {"440900": "dismissed", "450100": "resolved"}
    history = inbox.get(f"/api/alerts/{surge}", headers=_auth(inbox, "nanning")).json()["history"]
    changes = [(h["region"], h["action"], h["actor"], h["note"]) for h in history
               if h["action"] != "opened"]
    assert changes == [("440900", "ack", "maoming", "inspection booked"),
                       ("450100", "resolve", "nanning", "enrolment genuine for 4 of 5; 1 referred"),
                       ("440900", "dismiss", "maoming", "not ours")]
    assert all(h["at"] for h in history)


def test_a_provincial_center_acts_on_every_side_in_its_province_and_a_city_on_its_own(inbox):
    pool = _id(inbox, "pool_low")  # sides 440100 (the capital) and 440900
    city = inbox.post(f"/api/alerts/{pool}/ack", json={}, headers=_auth(inbox, "guangzhou"))
    assert city.json()["sides"] == {"440100": "acknowledged"}
    assert _statuses(inbox, "pool_low") == {"440100": "acknowledged", "440900": "open"}
    province = inbox.post(f"/api/alerts/{pool}/ack", json={}, headers=_auth(inbox, "guangdong"))
    assert province.status_code == 200
    assert province.json()["sides"] == {"440100": "acknowledged", "440900": "acknowledged"}


# ── persons as pseudonyms; settlement ids kept ─────────────────────────────


def test_persons_appear_as_pseudonyms_to_every_role(inbox):
    phantom = _id(inbox, "phantom")
    for who in ("maoming", "auditor"):
        body = inbox.get(f"/api/alerts/{phantom}", headers=_auth(inbox, who)).text
        assert "P440900RX" not in body and "psn-" in body
        assert "PB-X" in body and "PB-SHOP1" in body  # the settlements to pull
    surge = inbox.get(f"/api/alerts/{_id(inbox, 'surge')}", headers=_auth(inbox, "auditor"))
    raw = {p["person_id"] for p in inbox.alerts["surge"]["evidence"]["persons"]}
    assert raw and not any(p in surge.text for p in raw)


# ── the pages: login, CSRF, rate limit, access ─────────────────────────────


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _login(client, name: str, password: str):
    form = client.get("/login")
    return client.post("/login", data={"name": name, "password": password,
                                       "csrf": _csrf(form.text), "next": "/"},
                       follow_redirects=False)


def test_pages_need_a_login_and_show_only_the_centers_alerts(inbox):
    first = inbox.get("/", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/login")
    assert inbox.get(f"/alerts/{_id(inbox, 'phantom')}", follow_redirects=False
                     ).status_code == 303
    assert _login(inbox, "maoming", PASSWORD).status_code == 303
    page = inbox.get("/")
    assert page.status_code == 200
    assert _id(inbox, "phantom") in page.text and _id(inbox, "hunan") not in page.text
    assert "P440900RX" not in page.text
    assert inbox.get(f"/alerts/{_id(inbox, 'hunan')}").status_code == 404
    alert = inbox.get(f"/alerts/{_id(inbox, 'surge')}")
    assert alert.status_code == 200 and "your side" in alert.text and "<svg" in alert.text


def test_forms_without_the_csrf_token_are_refused(inbox):
    # Login itself: the form's token is required.
    inbox.get("/login")
    refused = inbox.post("/login", data={"name": "maoming", "password": PASSWORD},
                         follow_redirects=False)
    assert refused.status_code == 403
    assert _login(inbox, "maoming", PASSWORD).status_code == 303
    phantom = _id(inbox, "phantom")
    page = inbox.get(f"/alerts/{phantom}")
    forged = inbox.post(f"/alerts/{phantom}/ack", data={"note": "x"}, follow_redirects=False)
    assert forged.status_code == 403
    wrong = inbox.post(f"/alerts/{phantom}/ack", data={"note": "x", "csrf": "guess"},
                       follow_redirects=False)
    assert wrong.status_code == 403
    assert _statuses(inbox, "phantom") == {"440900": "open"}
    ok = inbox.post(f"/alerts/{phantom}/ack", data={"note": "seen", "csrf": _csrf(page.text)},
                    follow_redirects=False)
    assert ok.status_code == 303 and _statuses(inbox, "phantom") == {"440900": "acknowledged"}
    assert inbox.store.history(phantom)[-1]["actor"] == "maoming"
    assert inbox.post("/logout", follow_redirects=False).status_code == 403


def test_the_page_refuses_what_the_api_refuses(inbox):
    assert _login(inbox, "maoming", PASSWORD).status_code == 303
    phantom = _id(inbox, "phantom")
    page = inbox.get(f"/alerts/{phantom}")
    no_note = inbox.post(f"/alerts/{phantom}/dismiss", data={"csrf": _csrf(page.text)})
    assert no_note.status_code == 400 and "needs a note" in no_note.text
    inbox.post(f"/alerts/{phantom}/dismiss", data={"csrf": _csrf(page.text), "note": "ok"})
    again = inbox.post(f"/alerts/{phantom}/resolve", data={"csrf": _csrf(page.text),
                                                           "note": "late"})
    assert again.status_code == 409 and "already dismissed" in again.text
    # The page says what would reopen it: a finding above the severity it was closed at.
    severity = inbox.store.get(phantom)["severity"]
    assert (f"Closed at {severity}: only a finding more severe than {severity} reopens it"
            in inbox.get(f"/alerts/{phantom}").text)


def test_login_attempts_are_rate_limited(inbox):
    for _ in range(MAX_FAILURES):
        assert _login(inbox, "maoming", "wrong-password").status_code == 401
    blocked = _login(inbox, "maoming", PASSWORD)  # even the right password, for now
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert inbox.get("/", follow_redirects=False).status_code == 303  # not signed in
    # Another user (from the same client, under its own, higher limit) still signs in.
    Users(inbox.store).set_password("nanning", "nanning-password-1")
    assert _login(inbox, "nanning", "nanning-password-1").status_code == 303


def test_an_auditor_page_has_no_buttons(inbox):
    Users(inbox.store).set_password("auditor", "auditor-password-1")
    assert _login(inbox, "auditor", "auditor-password-1").status_code == 303
    page = inbox.get(f"/alerts/{_id(inbox, 'hunan')}")
    assert page.status_code == 200 and "Read only" in page.text
    assert "/ack" not in page.text and "Acknowledge" not in page.text


def test_the_pools_page_says_when_there_is_nothing_to_read(inbox, tmp_path):
    from infra.config import Settings
    from sinks.inbox import PoolSource

    assert _login(inbox, "maoming", PASSWORD).status_code == 303
    page = inbox.get("/pools")
    assert page.status_code == 200 and "without a source for the pool books" in page.text
    app = create_app(inbox.store, pools=PoolSource(Settings()))
    with TestClient(app) as other:
        assert _login(other, "maoming", PASSWORD).status_code == 303
        assert "no deployment to read" in other.get("/pools").text


# ── the commands ────────────────────────────────────────────────────────────


def test_users_add_prints_a_token_that_opens_the_api(tmp_path, monkeypatch, capsys, alerts):
    from sinks.store import AlertStore
    from streams.cli import main

    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    monkeypatch.setenv("FUNDWATCH_DB_URL", url)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert main(["users", "add", "gx.wang", "--region", "45", "--password-stdin"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "add", "gx.wang", "--region", "45"]) == 1  # exists
    assert main(["users", "add", "bad", "--region", "4501"]) == 2
    store = AlertStore(url)
    store.upsert_many(list(alerts.values()))
    with TestClient(create_app(store)) as client:
        assert _ids(client.get("/api/alerts", headers={"Authorization": f"Bearer {token}"})
                    ) == {alerts["surge"]["alert_id"]}
        assert _login(client, "gx.wang", "a-long-password").status_code == 303
    capsys.readouterr()
    assert main(["users", "list"]) == 0
    assert "gx.wang\tcenter\t45" in capsys.readouterr().out
    stored = store.engine.connect().exec_driver_sql(
        "select token_hash, password_hash from api_tokens join users on users.id = user_id"
    ).fetchall()
    assert token not in str(stored) and "a-long-password" not in str(stored)
    assert stored[0][1].startswith("$argon2id$")
    store.dispose()


def test_fundwatch_serve_answers_over_http(tmp_path):
    """The command itself: a real server process on a free port."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FUNDWATCH_DB_URL": f"sqlite:///{tmp_path / 'alerts.db'}"}
    env.pop("FUNDWATCH_BOOTSTRAP_SERVERS", None)
    add = subprocess.run([sys.executable, "-m", "streams.cli", "users", "add", "gd",
                          "--region", "44"], env=env, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, check=True)
    token = add.stdout.strip().splitlines()[-1]
    server = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--port",
                               str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/api/alerts")
        assert refused.value.code == 401
        request = urllib.request.Request(base + "/api/alerts",
                                         headers={"Authorization": f"Bearer {token}"})
        assert json.loads(urllib.request.urlopen(request).read()) == []
    finally:
        server.terminate()
        server.wait(10)


def test_login_returns_only_to_a_page_of_this_site(inbox):
    for target, expected in (("/alerts/x?y=1", "/alerts/x?y=1"), ("//evil.example", "/"),
                             ("/\\evil.example", "/"), ("https://evil.example/", "/")):
        inbox.cookies.clear()
        form = inbox.get("/login")
        done = inbox.post("/login", data={"name": "maoming", "password": PASSWORD,
                                          "csrf": _csrf(form.text), "next": target},
                          follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == expected
