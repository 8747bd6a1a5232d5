"""The inbox in a real browser: the system Chromium, driven by Playwright, against the
real server (uvicorn on a free port) over a real SQLite store.

A center signs in, finds an alert, opens its evidence, acknowledges it and sees the
status change; a new alert appears without a reload; another region's center signs
in and cannot see the first center's alert. Screenshots of the inbox and an alert
page are written to ``docs/`` for the README.

Skipped, saying why, only where Chromium (or Playwright) is not installed; ``make
test`` installs Debian's ``chromium`` first where it can.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from rules.alerts import make_alert, month_window
from rules.builtin.cross_province_surge import CrossProvinceSurge
from rules.builtin.phantom_bed import PhantomBed
from rules.builtin.pool_balance_low import PoolBalanceLow
from rules.fixtures import final_alerts, load_fixture, run_fixture
from sinks.access import Users
from sinks.inbox import create_app
from sinks.store import AlertStore

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and Path(p).exists()), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium;"
                             " `make test` tries that as root): the browser test cannot run")


@pytest.fixture
def server(tmp_path):
    import uvicorn

    store = AlertStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    for cls in (CrossProvinceSurge, PoolBalanceLow, PhantomBed):
        store.upsert_many(final_alerts(run_fixture(cls, load_fixture(cls))))
    users = Users(store)
    users.add("maoming", region="440900", password="maoming-password-1")
    users.add("nanning", region="450100", password="nanning-password-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(store, poll_s=0.5)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the inbox server did not start"
    yield f"http://127.0.0.1:{port}", store
    uv.should_exit = True
    thread.join(10)
    store.dispose()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _sign_in(page, base: str, name: str, password: str) -> None:
    page.goto(base + "/")
    assert "/login" in page.url
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")


def test_a_center_acknowledges_in_the_browser_and_another_region_cannot_see_it(server,
                                                                                browser):
    from playwright.sync_api import expect

    base, store = server
    phantom = next(r["alert"] for r in store.list_alerts(rule_id="phantom_bed"))
    surge = next(r["alert"] for r in store.list_alerts(rule_id="cross_province_surge"))

    maoming = browser.new_page(viewport={"width": 1280, "height": 800})
    _sign_in(maoming, base, "maoming", "maoming-password-1")
    rows = maoming.locator("#alerts tbody tr")
    expect(rows).to_have_count(3)  # the surge, the phantom stay, the pool running low
    # Most severe first.
    expect(rows.first.locator(".sev")).to_have_text("critical")
    DOCS.mkdir(exist_ok=True)
    maoming.screenshot(path=str(DOCS / "inbox.png"), full_page=True)

    # Find the joint review and open its evidence.
    maoming.get_by_role("link", name=surge["summary"]).click()
    maoming.wait_for_url(f"{base}/alerts/{surge['alert_id']}")
    expect(maoming.locator("h1")).to_contain_text("cross_province_surge")
    expect(maoming.locator("figure svg").first).to_be_visible()
    expect(maoming.locator("#evidence")).to_contain_text("baseline_windows")
    mine = maoming.locator('.sidebox[data-region="440900"]')
    theirs = maoming.locator('.sidebox[data-region="450100"]')
    expect(mine).to_contain_text("your side")
    expect(theirs).to_contain_text("only 450100's center changes it")
    expect(theirs.locator("button")).to_have_count(0)
    maoming.screenshot(path=str(DOCS / "alert.png"), full_page=True)

    # Acknowledge it, with a note, and see the status change.
    mine.get_by_label("note for 440900").fill("on-site inspection booked for Monday")
    mine.get_by_role("button", name="Acknowledge").click()
    expect(maoming.locator(".flash")).to_contain_text("440900: acknowledged")
    expect(mine.locator("[data-status]")).to_have_text("acknowledged")
    expect(theirs.locator("[data-status]")).to_have_text("open")
    expect(maoming.locator("#history")).to_contain_text("on-site inspection booked for Monday")
    assert store.sides(surge["alert_id"])["440900"]["changed_by"] == "maoming"

    # Back in the inbox, a new alert arrives and appears without a reload.
    maoming.get_by_role("link", name="← Inbox").click()
    maoming.wait_for_url(base + "/")
    new = make_alert("unfiled_cross_region", "warning", "institution", "H440900002",
                     regions=["440900"], window=month_window("2025-04"),
                     detected_at="2025-04-20T10:00:00+08:00",
                     summary="H440900002: 9 cross-region inpatient stays without filing",
                     evidence={"settlement_count": 9}, settlement_ids=["S-NEW-1"])
    store.upsert(new)
    expect(maoming.locator(f'tr[data-id="{new["alert_id"]}"]')).to_be_visible(timeout=5000)
    expect(maoming.locator("#newbar")).to_contain_text("1 new alert")

    # Another region's center: Nanning sees the joint review (its side still open)
    # but not Maoming's own alerts, not even by their address.
    nanning = browser.new_page(viewport={"width": 1280, "height": 800})
    _sign_in(nanning, base, "nanning", "nanning-password-1")
    expect(nanning.locator("#alerts tbody tr")).to_have_count(1)
    expect(nanning.locator("#alerts")).not_to_contain_text(phantom["alert_id"])
    expect(nanning.locator("#alerts")).not_to_contain_text("H440900002")
    response = nanning.goto(f"{base}/alerts/{phantom['alert_id']}")
    assert response.status == 404
    expect(nanning.locator("body")).to_contain_text("No alert")
    nanning.goto(f"{base}/alerts/{surge['alert_id']}")
    expect(nanning.locator('.sidebox[data-region="440900"] [data-status]')
           ).to_have_text("acknowledged")
    expect(nanning.locator('.sidebox[data-region="450100"]')).to_contain_text("your side")
