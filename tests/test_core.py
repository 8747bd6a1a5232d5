"""The detection core: routing, configuration, and a failing rule."""
from __future__ import annotations

import orjson
import pytest

from rules.builtin.unfiled_cross_region import UnfiledCrossRegion
from rules.alerts import make_alert, month_window
from rules.core import DetectionCore, Rule, RuleConfigError, load_rules
from streams.offline import OfflinePipeline
from tests.factories import contribution, settlement


class Exploding(Rule):
    rule_id = "exploding_rule"
    description = "raises on every settlement (a stand-in for a rule with a bug)"
    subject_kind = "institution"
    key_kind = "institution"

    def apply(self, state, event):
        raise ValueError("division by zero in a data engineer's new rule")


def unfiled(i: int) -> bytes:
    return orjson.dumps(settlement(
        settlement_id=f"U{i}", person_id=f"P{i}", institution_id="H440100001",
        insured_region="440900", treatment_region="440100", filing="none",
        visit_type="inpatient", settled_at=f"2025-03-1{i}T10:00:00+08:00",
        admitted_on=f"2025-03-0{i}", discharged_on=f"2025-03-1{i}"))


def test_a_failing_rule_is_dead_lettered_and_the_others_still_fire():
    pipeline = OfflinePipeline(DetectionCore([Exploding(), UnfiledCrossRegion()]))
    outcomes = [pipeline.feed(unfiled(i), source=f"t/0/{i}") for i in range(1, 6)]
    assert outcomes == ["accepted"] * 5          # the records themselves were fine
    assert len(pipeline.alerts) == 1             # the healthy rule still fired
    failed = [d for d in pipeline.deadletters if d["stage"] == "detect"]
    assert len(failed) == 5
    assert failed[0]["reasons"][0]["code"] == "rule_failed"
    assert "exploding_rule" in failed[0]["reasons"][0]["message"]
    assert not any(k.startswith("exploding_rule|") for k in pipeline.state)


class ExplodingAtMidnight(Rule):
    rule_id = "exploding_at_midnight"
    description = "counts settlements, then raises when a day closes (a timer with a bug)"
    subject_kind = "institution"
    key_kind = "institution"

    def apply(self, state, event):
        return {"n": (state or {}).get("n", 0) + 1}, []

    def close(self, state, midnight):
        raise KeyError("a day the rule did not expect")


def test_a_failing_close_timer_is_dead_lettered_and_the_others_still_fire():
    pipeline = OfflinePipeline(DetectionCore([ExplodingAtMidnight(), UnfiledCrossRegion()]))
    for i in range(1, 6):  # 11-15 March: each record moves the watermark past a midnight
        assert pipeline.feed(unfiled(i), source=f"t/0/{i}") == "accepted"
    assert len(pipeline.alerts) == 1
    failed = [d for d in pipeline.deadletters if d["stage"] == "detect"]
    assert len(failed) == 5  # the first record closes 11 March 00:00, then one per day
    reason = failed[-1]["reasons"][0]
    assert reason["code"] == "rule_failed" and "exploding_at_midnight" in reason["message"]
    assert "closing exploding_at_midnight|H440100001 at 2025-03-15T00:00:00+08:00" in \
        reason["message"]
    # Its state is what apply made of it; the failed timer changed nothing.
    assert pipeline.state["exploding_at_midnight|H440100001"]["v"] == {"n": 5}


def test_routes_follow_the_rules_key_kinds():
    core = DetectionCore([UnfiledCrossRegion()], books=[])
    from streams.records import parse

    assert core.routes(parse(unfiled(1))) == [("institution", "H440100001")]
    # A contribution has no institution: no rule of that kind sees it.
    assert core.routes(parse(orjson.dumps(contribution()))) == []
    # By default the pool book is kept too: every record reaches its pool.
    core = DetectionCore([UnfiledCrossRegion()])
    assert core.routes(parse(unfiled(1))) == [("pool", "440900:resident"),
                                              ("institution", "H440100001")]
    assert core.routes(parse(orjson.dumps(contribution()))) == [
        ("pool", f"{contribution()['pool_region']}:{contribution()['insurance_type']}")]


def test_rule_parameters_are_validated_with_their_names():
    with pytest.raises(RuleConfigError, match=r"rules.unfiled_cross_region.min_settlements"):
        load_rules({"unfiled_cross_region": {"min_settlements": "five"}})
    with pytest.raises(RuleConfigError, match="below the minimum"):
        load_rules({"unfiled_cross_region": {"min_settlements": 0}})
    with pytest.raises(RuleConfigError, match="unknown parameter"):
        load_rules({"unfiled_cross_region": {"min_stays": 3}})
    with pytest.raises(RuleConfigError, match="unknown rule id"):
        load_rules({"no_such_rule": {}})
    assert "unfiled_cross_region" not in {
        r.rule_id for r in load_rules({"unfiled_cross_region": {"enabled": False}})}
    (rule,) = [r for r in load_rules({"unfiled_cross_region": {"min_settlements": 8}})
               if r.rule_id == "unfiled_cross_region"]
    assert rule.p["min_settlements"] == 8


def test_threshold_escalation_keeps_one_alert_id():
    pipeline = OfflinePipeline(DetectionCore([UnfiledCrossRegion(min_settlements=2,
                                                                 critical_settlements=4)]))
    for i in range(1, 6):
        pipeline.feed(unfiled(i))
    severities = [a["severity"] for a in pipeline.emitted]
    assert severities == ["warning", "warning", "critical", "critical"]
    assert len({a["alert_id"] for a in pipeline.emitted}) == 1


class FundSum(Rule):
    """Sums fund_paid per institution: not idempotent by itself, like a balance."""

    rule_id = "fund_sum_probe"
    description = "sums fund_paid per institution (a test probe)"
    subject_kind = "institution"
    key_kind = "institution"

    def apply(self, state, event):
        total = (state or 0) + event.fund_paid_fen
        alerts = [] if total < 300000 else [make_alert(
            self.rule_id, "info", "institution", event.institution_id, regions=["440100"],
            window=month_window("2025-03"), detected_at="2025-03-31T00:00:00+08:00",
            summary="over", evidence={"total": total})]
        return total, alerts


def test_each_position_is_applied_once():
    from streams.records import parse

    core, state = DetectionCore([FundSum()]), {}
    event = parse(unfiled(1))
    for position in [(0, 5), (0, 5), (0, 3)]:      # a redelivery, then an older offset
        core.commit(state, core.process("institution", "H440100001", event, state, position))
    assert state["fund_sum_probe|H440100001"]["v"] == event.fund_paid_fen
    core.commit(state, core.process("institution", "H440100001", event, state, (1, 2)))
    assert state["fund_sum_probe|H440100001"]["v"] == 2 * event.fund_paid_fen
    assert state["fund_sum_probe|H440100001"]["at"] == {"0": 5, "1": 2}


def test_state_is_saved_only_when_the_driver_commits():
    """A worker that dies after computing but before its alerts were acknowledged has
    not committed; the redelivered event must produce the alert again."""
    from streams.records import parse

    core, state = DetectionCore([FundSum()]), {}
    big = parse(orjson.dumps({**orjson.loads(unfiled(1)), "total_cost": "5000.00",
                              "fund_paid": "4000.00", "personal_paid": "1000.00",
                              "items": [{"category": "drug", "amount": "5000.00"}]}))
    first = core.process("institution", "H440100001", big, state, (0, 7))
    assert first.alerts and state == {}                # computed, not saved
    again = core.process("institution", "H440100001", big, state, (0, 7))
    assert again.alerts == first.alerts
    core.commit(state, again)
    assert core.process("institution", "H440100001", big, state, (0, 7)).alerts == []


def test_per_province_overrides():
    rule = UnfiledCrossRegion(min_settlements=5, provinces={"45": {"min_settlements": 9}})
    assert rule.param("min_settlements", "44") == 5
    assert rule.param("min_settlements", "45") == 9
    with pytest.raises(RuleConfigError, match=r"provinces\.45"):
        UnfiledCrossRegion(provinces={"45": {"min_settlement": 9}})


def test_a_record_read_twice_from_its_source_is_applied_once():
    """A worker killed before committing its input offsets re-reads records it had
    already passed on; admission recognises the same source position and sends the
    record on under its first position, so even a summing rule counts it once."""
    pipeline = OfflinePipeline(DetectionCore([FundSum()]))
    record = unfiled(1)
    assert pipeline.feed(record, source="fundwatch.settlements/0/7") == "accepted"
    assert pipeline.feed(unfiled(2), source="fundwatch.settlements/0/8") == "accepted"
    assert pipeline.feed(record, source="fundwatch.settlements/0/7") == "accepted"
    assert pipeline.counts["redelivered"] == 1
    from streams.records import parse

    expected = parse(record).fund_paid_fen + parse(unfiled(2)).fund_paid_fen
    assert pipeline.state["fund_sum_probe|H440100001"]["v"] == expected


def test_day_and_month_keys_are_the_shanghai_calendar_of_any_instant():
    """day_of and month_of (formatted from the date, for speed) give exactly what
    strftime on the Asia/Shanghai time gave, for instants in any offset — including
    China's summer time of 1986–1991, the hours around midnight, and years before
    1000, which strftime does not pad."""
    import random
    from datetime import UTC, datetime, timedelta, timezone

    from rules.alerts import SHANGHAI, day_of, month_of

    rng = random.Random(7)
    instants = [datetime(1986, 5, 3, 17, 30, tzinfo=UTC),   # summer time: +09:00
                datetime(1991, 9, 14, 15, 0, tzinfo=UTC),
                datetime(2025, 5, 31, 16, 0, tzinfo=UTC),   # Shanghai midnight
                datetime(2025, 5, 31, 15, 59, 59, tzinfo=UTC),
                datetime(999, 6, 1, tzinfo=UTC)]
    start = datetime(1900, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        offset = timezone(timedelta(minutes=rng.randrange(-12 * 60, 14 * 60 + 1, 15)))
        instants.append((start + timedelta(seconds=rng.randrange(200 * 365 * 86400)))
                        .astimezone(offset))
    for moment in instants:
        local = moment.astimezone(SHANGHAI)
        assert day_of(moment) == local.strftime("%Y-%m-%d"), moment
        assert month_of(moment) == local.strftime("%Y-%m"), moment
    assert day_of(instants[2]) == "2025-06-01" and day_of(instants[3]) == "2025-05-31"
    assert (day_of(instants[4]), month_of(instants[4])) == ("999-06-01", "999-06")


@pytest.mark.parametrize("word_order", ["memoryview", "struct"])
def test_murmur2_is_the_partitioner_kafka_clients_use(monkeypatch, word_order):
    """Records must land on the partition a Java or aiokafka producer would pick for
    the same key: our faster murmur2 gives aiokafka's answer for every key length,
    on either way of reading the words (the struct one serves big-endian machines)."""
    import random

    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from rules import core

    monkeypatch.setattr(core, "_WORDS", word_order == "memoryview")
    rng = random.Random(11)
    keys = [rng.randbytes(rng.randrange(0, 80)) for _ in range(20_000)]
    keys += [f"{kind}:{rng.randrange(10**9)}".encode() for kind in
             ("settlement", "person", "institution", "pool", "chain") for _ in range(1000)]
    mismatched = [k for k in keys if core.murmur2(k) != aiokafka_murmur2(k)]
    assert not mismatched, mismatched[:5]
    assert core.murmur2(b"person:P1") == aiokafka_murmur2(b"person:P1") == 1601883779
