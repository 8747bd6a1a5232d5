"""The live pipeline against the real embedded broker (Tansu) and a real worker.

Each test runs ``fundwatch worker`` as a separate process — exactly what production
runs — produces records to its input topics and reads what comes out.
"""
from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from decimal import Decimal

import orjson
import pytest

from rules.core import DetectionCore, load_rules
from sinks.store import AlertStore
from streams.live import start_worker, stop_worker
from streams.offline import OfflinePipeline
from tests.factories import contribution, dumps, reversal_of, settlement
from tests.live_support import read_changelog, read_topic, run_through_worker

pytestmark = pytest.mark.broker


def unfiled_stay(i: int, **overrides) -> dict:
    return settlement(**{
        "settlement_id": f"LIVE-{i}", "person_id": f"P-{i}", "institution_id": "H440100001",
        "insured_region": "440900", "treatment_region": "440100", "filing": "none",
        "visit_type": "inpatient", "settled_at": f"2025-03-{10 + i:02d}T09:30:00+08:00",
        "admitted_on": f"2025-03-{5 + i:02d}", "discharged_on": f"2025-03-{10 + i:02d}",
        **overrides})


def test_every_record_ends_where_it_should(live_settings):
    stays = [unfiled_stay(i) for i in range(1, 7)]
    # Adds up on its own, but moves one yuan from the fund's share to the person's.
    bad_reversal = reversal_of(stays[1], settlement_id="LIVE-2-R-BAD")
    bad_reversal["fund_paid"] = str(Decimal(bad_reversal["fund_paid"]) + 1)
    bad_reversal["personal_paid"] = str(Decimal(bad_reversal["personal_paid"]) - 1)
    lines = [dumps(s) for s in stays] + [
        dumps(contribution()),
        dumps(stays[0]),                                        # exact duplicate
        orjson.dumps(dict(reversed(list(stays[2].items())))),   # same content, other order
        dumps({**stays[3], "fund_paid": stays[3]["total_cost"], "personal_paid": "0.00"}),
        b"this is not json",
        b"\xff\xfe\x00garbage",
        dumps({**unfiled_stay(7), "personal_paid": "1.00"}),    # does not add up
        dumps(unfiled_stay(8, admitted_on="2025-03-20", discharged_on="2025-03-18")),
        dumps(reversal_of(stays[5], settlement_id="LIVE-6-R")),                # a valid reversal
        dumps(bad_reversal),
    ]
    started = time.time()
    worker = start_worker(live_settings, live_settings_log(live_settings))
    try:
        o = asyncio.run(run_through_worker(live_settings, worker, lines, len(lines)))
    finally:
        stop_worker(worker)

    # The worker says when it worked (the bench's rates are read off these).
    began, until = o.worked_between()
    assert began is not None and until is not None
    assert started < began <= until < time.time()
    assert o.count("accepted") == 8          # 6 stays, 1 contribution, 1 reversal
    assert o.count("duplicate") == 2
    assert len(o.deadletters) == 6
    assert o.accounted == len(lines)          # none lost, none counted twice
    codes = Counter(tuple(sorted(r["code"] for r in d["reasons"])) for d in o.deadletters)
    assert codes[("conflicting_duplicate",)] == 1
    assert codes[("not_json",)] == 1
    assert codes[("not_utf8",)] == 1
    assert codes[("amounts_do_not_add_up",)] == 1
    assert codes[("discharge_before_admission",)] == 1
    assert codes[("reversal_amounts_mismatch",)] == 1
    sent = set(lines)
    for d in o.deadletters:
        assert base64.b64decode(d["original_b64"]) in sent     # the exact bytes
        assert d["source"]["topic"] == live_settings.topic("settlements")
        assert d["source"]["offset"] is not None and d["source"]["partition"] is not None
        assert all(r["message"] for r in d["reasons"])

    # One alert: six unfiled stays, one reversed → five, still a warning.
    assert [a["rule_id"] for a in o.alerts.values()] == ["unfiled_cross_region"]
    alert = next(iter(o.alerts.values()))
    assert alert["severity"] == "warning"
    assert alert["evidence"]["settlement_count"] == 5
    assert "LIVE-6" not in alert["settlement_ids"]

    # The store holds exactly what the topic carried, once.
    store = AlertStore(live_settings.db_url)
    assert store.all() == [alert]

    # And the offline driver, same core, same input, gives the same alert.
    offline = OfflinePipeline(DetectionCore(
        load_rules(), partitions=live_settings.partitions)).feed_all(lines)
    assert offline.alerts == o.alerts
    assert offline.counts["accepted"] == 8 and offline.counts["duplicate"] == 2


def test_a_bad_record_too_large_to_copy_twice_is_dead_lettered_whole(live_settings):
    """A dead letter carries its record's exact bytes in base64, and the text beside
    them: a bad record of 1 MB, as large as a topic takes by default, made a dead
    letter of 2.3 MB, over the producer's limit (1,000,000 bytes). The send failed,
    the worker stopped (exit code 70), and a successor would meet the same record:
    no worker could get past it. The text copy is now left out of a large record's
    dead letter, and the dead-letter topic and the producer take the largest one
    (streams.deadletter)."""
    big = b'{"schema": "settlement/v1", "pad": "' + b"x" * 999_950 + b'"}'
    small = b'{"schema": "settlement/v1", "pad": "x"}'
    lines = [dumps(unfiled_stay(1)), big, small, dumps(unfiled_stay(2))]
    worker = start_worker(live_settings, live_settings_log(live_settings))
    try:
        o = asyncio.run(run_through_worker(live_settings, worker, lines, len(lines)))
    finally:
        stop_worker(worker)
    assert o.count("accepted") == 2
    letters = {base64.b64decode(d["original_b64"]): d for d in o.rejected}
    assert set(letters) == {big, small}                     # the exact bytes, both
    assert letters[small]["original"] == small.decode()     # a small one keeps its text
    assert letters[big]["original"] is None
    assert letters[big]["original_text_left_out"] is True
    assert letters[big]["reasons"] == letters[small]["reasons"]


def test_a_settlement_as_large_as_a_topic_takes_goes_through(live_settings):
    """A long stay itemised line by line: 19,000 cost lines, 931,535 bytes, under the
    1 MB a topic takes by default. Admission passes it on with its text beside its
    canonical form, a message of 2,091,308 bytes: over the producer's limit of
    1,000,000 bytes (the worker stopped, exit code 70, and so would every
    successor), and over a real cluster's default for a topic. The internal hops
    are now made to take 4 MiB (infra.topics), and the producer to send it."""
    from infra.topics import topic_configs

    n = 19_000
    long_stay = unfiled_stay(1, items=[{"category": "drug", "amount": "1.00",
                                        "quantity": 1}] * n,
                             total_cost=f"{n}.00", fund_paid=f"{n - 1000}.00",
                             personal_paid="1000.00")
    lines = [dumps(long_stay)] + [dumps(unfiled_stay(i)) for i in range(2, 6)]
    assert 900_000 < len(lines[0]) < 1_000_000
    worker = start_worker(live_settings, live_settings_log(live_settings))
    try:
        o = asyncio.run(run_through_worker(live_settings, worker, lines, len(lines)))
    finally:
        stop_worker(worker)
    assert o.count("accepted") == 5 and not o.deadletters
    (alert,) = o.alerts.values()                       # five unfiled stays, the long one too
    assert "LIVE-1" in alert["settlement_ids"]
    configs = topic_configs(live_settings)
    largest = {hop: max(len(value) for _, value in asyncio.run(
        read_topic(live_settings, live_settings.topic(hop)))) for hop in ("admit", "detect")}
    assert largest["admit"] > 1_048_588, largest  # Kafka's default message.max.bytes
    for hop, size in largest.items():
        assert size <= int(configs[live_settings.topic(hop)]["max.message.bytes"]), largest


def live_settings_log(settings):
    from pathlib import Path

    return Path(settings.data_dir).parent / "worker.log"


async def changelog_records(settings, table: str) -> int:
    return len(await read_changelog(settings, table))


async def wait_for_changelog(settings, table: str, at_least: int, timeout_s: float = 20):
    for _ in range(int(timeout_s / 0.5)):
        if await changelog_records(settings, table) >= at_least:
            return
    raise AssertionError(f"{table} changelog never reached {at_least} records")


def test_killed_worker_restarts_and_still_knows_duplicates(live_settings):
    stays = [unfiled_stay(i) for i in range(1, 5)]
    log = live_settings_log(live_settings)
    worker = start_worker(live_settings, log)
    try:
        o = asyncio.run(run_through_worker(live_settings, worker, [dumps(s) for s in stays], 4))
        assert o.count("accepted") == 4 and not o.alerts     # 4 unfiled stays: below 5
        asyncio.run(wait_for_changelog(live_settings, "ledger", 5))  # 4 + the counts
        asyncio.run(wait_for_changelog(live_settings, "rule-state", 4))
    finally:
        stop_worker(worker, hard=True)                          # SIGKILL: no clean shutdown

    worker = start_worker(live_settings, log)
    try:
        again = [dumps(stays[0]),                                # replayed: a duplicate
                 dumps({**stays[1], "diagnoses": ["I21.9"]}),   # same id, new content
                 dumps(unfiled_stay(9))]                          # new: accepted
        o = asyncio.run(run_through_worker(live_settings, worker, again, 4 + len(again)))
    finally:
        stop_worker(worker)
    assert o.count("accepted") == 5
    assert o.count("duplicate") == 1
    assert [r["code"] for d in o.deadletters for r in d["reasons"]] == ["conflicting_duplicate"]
    # The rule state came back too: the fifth unfiled stay raises the alert, counting
    # each stay once although the restarted worker re-read what it had not committed.
    (alert,) = o.alerts.values()
    assert alert["evidence"]["settlement_count"] == 5


def test_a_worker_asked_to_stop_with_its_broker_gone_ends_by_its_deadline(tmp_path):
    """Faust's stop flushes the producer, which with the broker gone waits for the
    producer's request timeout (20 minutes by default): a supervisor stopping a worker
    during a broker outage waited with it. The worker now ends itself
    ``stop_deadline_s`` after its consumer stopped, exit code 70 as for any hard stop
    (nothing is committed past what it had not passed on). A broker of the test's own:
    the session's is needed by the others."""
    import signal
    import subprocess
    import uuid

    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.config import Settings
    from tests.live_support import GROUP_TIMEOUTS

    tag = uuid.uuid4().hex[:8]
    settings = Settings(topic_prefix=f"t{tag}.", app_id=f"fundwatch-{tag}", partitions=2,
                        data_dir=str(tmp_path / "data"),
                        db_url=f"sqlite:///{tmp_path / 'alerts.db'}", stop_deadline_s=3.0,
                        **GROUP_TIMEOUTS)
    log = tmp_path / "worker.log"
    with EmbeddedBroker(settings, log_path=tmp_path / "broker.log") as broker:
        settings = settings.with_(bootstrap_servers=broker.bootstrap_servers)
        ensure_topics(broker.bootstrap_servers, settings)
        worker = start_worker(settings, log)
        try:
            o = asyncio.run(run_through_worker(settings, worker, [dumps(unfiled_stay(1))], 1))
            assert o.count("accepted") == 1                     # it worked, with its broker
        except BaseException:
            stop_worker(worker, hard=True)
            raise
    try:
        time.sleep(1.0)                                         # the broker is gone
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker was still there 60 s after SIGTERM") from None
        took = time.monotonic() - asked
    finally:
        stop_worker(worker, hard=True)
    assert worker.returncode == 70
    assert 3.0 <= took < 30, took
    assert "the stop did not end within 3 s" in log.read_text(errors="replace")


def test_a_quiet_consumer_waits_longer_and_shortens_with_the_first_record(broker):
    """streams.app's fetch waits on a real aiokafka fetcher and Tansu: the short wait
    while records come, the quiet one after ``quiet_after_s`` with none, the short one
    again with the fetch that brings the next record."""

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.app import FetchWait, _fetch_waits
    from tests.live_support import new_topic

    _fetch_waits(20, 200)  # patches aiokafka's fetcher: the worker does it at start
    topic = new_topic(broker, "quiet", 1)

    async def run() -> list[int]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap_servers,
                                    fetch_max_wait_ms=20, auto_offset_reset="earliest")
        await consumer.start()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        waits = []
        try:
            fetcher = consumer._fetcher
            fetcher._fundwatch_wait = FetchWait(20, 200, quiet_after_s=0.5)
            waits.append(fetcher._fetch_max_wait_ms)           # nothing asked yet: 20
            deadline = time.monotonic() + 10
            while fetcher._fetch_max_wait_ms != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            waits.append(fetcher._fetch_max_wait_ms)           # quiet: 200
            await producer.send_and_wait(topic, b"a settlement")
            message = await asyncio.wait_for(consumer.getone(), 10)
            assert message.value == b"a settlement"
            waits.append(fetcher._fetch_max_wait_ms)           # records came: 20
        finally:
            await producer.stop()
            await consumer.stop()
        return waits

    assert asyncio.run(run()) == [20, 200, 20]
