"""Cross-province surge → joint review (双地联查), through the real broker and a real
worker on four partitions, with streams built for the purpose — and the replay of the
same stream through the offline driver, which must give the identical alert.

One province's stream, six weeks from Monday 2025-03-03 (``tests.factories.weeks``):
five weeks of baseline, then the surge week, then a bill on day 42 that moves the
watermark past day 41, the last day judged.

* H440900001 (Maoming): its Guangxi (450100) patients' bills rise 30% → one alert;
* H440300002 (Shenzhen): +15% → none;
* H440100003 (Guangzhou): cross-province flat, a rise only in same-province patients
  from Maoming → none;
* H440600005 (Foshan): one 300-yuan bill a week, then a burst of five large ones →
  none (below the volume guards).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import orjson
import pytest

from infra.broker import ensure_topics
from infra.config import Settings
from rules.alerts import SHANGHAI
from rules.core import DetectionCore, load_rules
from sinks.store import AlertStore
from streams.live import start_worker, stop_worker
from streams.offline import OfflinePipeline
from streams.records import parse
from streams.watermark import event_ms
from tests.factories import D0, bill, dumps, weeks
from tests.live_support import GROUP_TIMEOUTS, run_through_worker

pytestmark = pytest.mark.broker

SURGING, MODEST, LOCAL, TINY = "H440900001", "H440300002", "H440100003", "H440600005"


def midnight(day: int) -> datetime:
    d = D0 + timedelta(days=day)
    return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI)


def province_stream() -> list[bytes]:
    events = weeks(1500, 1950, inst=SURGING, treat="440900")[:-1]           # +30%
    events += weeks(1500, 1725, inst=MODEST, treat="440300")[:-1]           # +15%
    events += weeks(1500, 1500, inst=LOCAL, treat="440100")[:-1]            # flat...
    events += [bill(d, 3000, inst=LOCAL, treat="440100", insured="440900", hour=14)
               for d in range(35, 42)]                                        # ...local up
    events += [bill(d, 300, inst=TINY, treat="440600") for d in range(0, 35, 7)]
    events += [bill(d, 3000, inst=TINY, treat="440600") for d in range(35, 40)]
    events.append(bill(42, 100, inst=SURGING, treat="440900", insured="440900", hour=9))
    lines = [dumps(e) for e in events]
    return sorted(lines, key=lambda raw: event_ms(parse(raw)))  # as the province sends


@pytest.fixture
def four_partitions(broker, tmp_path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"j{tag}.",
                        app_id=f"joint-{tag}", partitions=4, data_dir=str(tmp_path / "data"),
                        db_url=f"sqlite:///{tmp_path / 'alerts.db'}", **GROUP_TIMEOUTS)
    ensure_topics(broker.bootstrap_servers, settings)
    return settings


def replay(lines: list[bytes], partitions: int) -> OfflinePipeline:
    """The offline driver with the live workers' partition count (per-partition models
    — phantom_bed's — are kept per detect partition, as live)."""
    return OfflinePipeline(DetectionCore(load_rules(), partitions=partitions)).feed_all(lines)


def check_the_joint_review(alerts: dict[str, dict]) -> dict:
    """Exactly one alert: the surging institution's joint review, both sides named."""
    assert len(alerts) == 1, [(a["rule_id"], a["subject"]) for a in alerts.values()]
    (alert,) = alerts.values()
    assert alert["rule_id"] == "cross_province_surge" and alert["review"] == "joint"
    assert alert["subject"] == {"kind": "institution", "id": SURGING}
    assert alert["regions"] == ["440900", "450100"]  # treatment side, then insured side
    assert "inspection" in alert["duties"]["440900"]
    assert "enrolment" in alert["duties"]["450100"]
    ev = alert["evidence"]
    assert ev["growth"] == 0.3 and ev["current"] == "27300.00" and ev["baseline"] == "21000.00"
    assert ev["current_window"]["end"] == midnight(42).isoformat()
    assert set(ev["insured_regions"]) == {"450100"}
    assert len(alert["settlement_ids"]) == 14
    return alert


def test_a_30_percent_surge_opens_one_joint_review_and_nothing_else_does(four_partitions,
                                                                          tmp_path):
    lines = province_stream()
    offline = replay(lines, four_partitions.partitions)
    expected = check_the_joint_review(offline.alerts)

    worker = start_worker(four_partitions, tmp_path / "worker.log")
    try:
        observed = asyncio.run(run_through_worker(four_partitions, worker, lines, len(lines),
                                                  closed_through=midnight(42)))
    finally:
        stop_worker(worker)
    live = check_the_joint_review(observed.alerts)
    # The replay gives the identical alert: id and content, byte for byte.
    assert orjson.dumps(live, option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
    store = AlertStore(four_partitions.alert_store_url())
    try:
        assert [a["alert_id"] for a in store.all()] == [expected["alert_id"]]
        assert store.get(expected["alert_id"])["evidence"]["growth"] == 0.3
    finally:
        store.dispose()


def test_restarting_the_worker_mid_window_neither_loses_nor_duplicates(four_partitions,
                                                                        tmp_path):
    lines = province_stream()
    expected = check_the_joint_review(replay(lines, four_partitions.partitions).alerts)
    # Cut in the middle of the surge week: days up to 38 first (the surge is not
    # yet above the threshold: +17% on the window ending 38), the rest after a kill.
    cut = next(i for i, raw in enumerate(lines)
               if event_ms(parse(raw)) >= int(midnight(39).timestamp() * 1000))
    log = tmp_path / "worker.log"
    worker = start_worker(four_partitions, log)
    try:
        first = asyncio.run(run_through_worker(four_partitions, worker, lines[:cut], cut,
                                               closed_through=midnight(38)))
        assert first.alerts == {}
    finally:
        stop_worker(worker, hard=True)  # SIGKILL, mid-window

    worker = start_worker(four_partitions, log)
    try:
        observed = asyncio.run(run_through_worker(four_partitions, worker, lines[cut:],
                                                  len(lines), closed_through=midnight(42)))
    finally:
        stop_worker(worker)
    live = check_the_joint_review(observed.alerts)
    assert orjson.dumps(live, option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
    assert observed.count("accepted") == len(lines)  # each record counted once
    store = AlertStore(four_partitions.alert_store_url())
    try:
        assert store.count() == 1
    finally:
        store.dispose()
