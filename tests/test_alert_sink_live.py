"""The alert sink in a real worker on the real embedded broker: alerts from
``fundwatch.alerts`` into the store, bad messages to the dead-letter topic, and the
worker's own dispatcher notifying a real local webhook from its config file."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.broker import kafka_client_options
from rules.alerts import make_alert, month_window
from sinks.privacy import Pseudonymizer
from sinks.store import AlertStore
from sinks.webhook import WebhookReceiver
from streams.live import start_worker, stop_worker
from tests.live_support import wait_until

pytestmark = pytest.mark.broker

SECRET = "live-test-pseudonym-key-42"


def surge(severity: str) -> dict:
    return make_alert("cross_province_surge", severity, "institution", "H440900001",
                      regions=["440900", "450100"], window=month_window("2025-05"),
                      detected_at="2025-05-20T00:00:00+08:00",
                      summary="H440900001 cross-province cost up; P450100000017 leads",
                      evidence={"persons": [{"person_id": "P450100000017",
                                             "insured_region": "450100"}]},
                      review="joint", duties={"440900": "On-site inspection",
                                              "450100": "Verify enrolment"})


async def _send(settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                **kafka_client_options(settings))
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(settings.topic("alerts"), value, key=key)
    finally:
        await producer.stop()


async def _dead_letters(settings, expect: int, timeout_s: float = 30) -> list[dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **kafka_client_options(settings))
    await consumer.start()
    parts = [TopicPartition(settings.topic("deadletter"), p) for p in range(settings.partitions)]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return found


def test_sink_stores_dead_letters_and_the_worker_notifies(live_settings, tmp_path):
    with WebhookReceiver("/maoming") as maoming, WebhookReceiver("/guangxi") as guangxi:
        config = tmp_path / "fundwatch.toml"
        config.write_text(
            f'[fundwatch]\nnotify_secret = "{SECRET}"\n\n'
            f'[[notify.routes]]\nname = "maoming"\nregions = ["440900"]\n'
            f'urls = ["{maoming.apprise_url}"]\n\n'
            f'[[notify.routes]]\nname = "guangxi"\nregions = ["45"]\n'
            f'urls = ["{guangxi.apprise_url}"]\n', encoding="utf-8")
        settings = live_settings.with_(config_path=str(config))
        worker = start_worker(settings, tmp_path / "worker.log")
        store = AlertStore(settings.db_url)
        try:
            warning = surge("warning")
            key = warning["alert_id"].encode()
            asyncio.run(_send(settings, [
                (key, orjson.dumps(warning)),
                (key, orjson.dumps(warning)),                       # redelivered
                (b"x", b"{not json"),
                (b"y", orjson.dumps({**warning, "regions": ["4409"], "summary": ""})),
            ]))
            assert wait_until(
                lambda: len(maoming.messages()) == 1 and len(guangxi.messages()) == 1,
                90), (tmp_path / "worker.log").read_text()[-3000:]
            asyncio.run(_send(settings, [(key, orjson.dumps(surge("critical")))]))
            assert wait_until(lambda: len(maoming.messages()) == 2 and len(guangxi.messages()) == 2)
            letters = asyncio.run(_dead_letters(settings, expect=2))

            assert store.count() == 1 and store.revisions(warning["alert_id"]) == 2
            assert {r: s["status"] for r, s in store.sides(warning["alert_id"]).items()} == {
                "440900": "open", "450100": "open"}
            assert [m["type"] for m in maoming.messages()] == ["warning", "failure"]
            gx = guangxi.messages()[1]["message"]
            assert "450100: Verify enrolment" in gx
            assert Pseudonymizer(SECRET)("P450100000017") in gx
            for m in maoming.messages() + guangxi.messages():
                assert "P450100000017" not in m["title"] + m["message"]

            assert sorted(d["stage"] for d in letters) == ["alert_sink", "alert_sink"]
            reasons = sorted(r["message"] for d in letters for r in d["reasons"])
            assert any(r.startswith("not JSON") for r in reasons)
            assert "regions must be a non-empty list of distinct 6-digit region codes" in reasons
            assert "summary must be a non-empty string" in reasons
            assert all(r["code"] == "invalid_alert" for d in letters for r in d["reasons"])
            time.sleep(2)  # and nothing more arrives
            assert len(maoming.messages()) == 2 and len(guangxi.messages()) == 2
            assert worker.poll() is None
        finally:
            stop_worker(worker)
            store.dispose()
