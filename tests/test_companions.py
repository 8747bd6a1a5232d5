"""The deterministic companions of phantom-bed scoring, on hand-built event sequences.

``overlapping_stay`` and ``split_admission`` (per person) and ``pharmacy_chain_anomaly``
(per chain): each on cases that must fire and cases that must not, beyond their
fixtures — boundaries of their parameters, arrival order, re-delivery, reversals,
state that stays bounded and survives the JSON round trip of a Faust table. Records
are contract records (``tests/factories.py``) parsed as the pipeline parses them;
the full pipeline (validation, admission, close timers) runs where the order of
arrival or a reversal matters.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

import orjson
import pytest

from rules import detail
from rules.alerts import SHANGHAI
from rules.builtin._stays import KEEP_DAYS
from rules.builtin.overlapping_stay import OverlappingStay
from rules.builtin.pharmacy_chain_anomaly import PharmacyChainAnomaly
from rules.builtin.split_admission import SplitAdmission
from rules.core import DetectionCore, RuleConfigError
from rules.registry import Registry
from streams.offline import OfflinePipeline
from streams.records import parse
from tests.factories import dumps, reversal_of, settlement


def stay(sid, adm, dis, *, person="P440900R9", inst="H440900002", treat="440900",
         insured="440900", dx=("I63.9",), fund="9000.00", hour=10):
    return settlement(settlement_id=sid, person_id=person, institution_id=inst,
                      treatment_region=treat, insured_region=insured,
                      filing="none" if treat == insured else "temporary",
                      admitted_on=adm, discharged_on=dis, diagnoses=list(dx),
                      settled_at=f"{dis}T{hour:02d}:00:00+08:00", total_cost="12000.00",
                      fund_paid=fund, personal_paid=f"{12000 - float(fund):.2f}")


AFTER_EVERYTHING = datetime(2030, 1, 1, tzinfo=SHANGHAI)


def run_rule(rule, records, state=None, until=AFTER_EVERYTHING):
    """Apply parsed records to one rule directly, then close every day before ``until``
    (rules that judge at the close); (state, every alert raised)."""
    alerts = []
    for rec in records:
        state, fired = rule.apply(state, parse(dumps(rec)))
        alerts += fired
    if rule.closes():
        state, fired = rule.close(state, until)
        alerts += fired
    return state, alerts


def replay(rule, records):
    """The records through the offline pipeline (admission, reversals checked, close
    timers at each midnight the watermark passes); the alerts standing at the end."""
    pipeline = OfflinePipeline(DetectionCore([rule], books=[]))
    for i, rec in enumerate(records):
        assert pipeline.feed(dumps(rec), source=f"t/0/{i}") == "accepted"
    pipeline.close_input()
    return pipeline


def round_trip(state):
    return orjson.loads(orjson.dumps(state))


# --------------------------------------------------------------------------- overlapping_stay

def test_an_overlap_is_found_whichever_stay_arrives_first():
    a = stay("A", "2025-03-01", "2025-03-12")
    b = stay("B", "2025-03-08", "2025-03-15", inst="H440100001", treat="440100")
    _, first = run_rule(OverlappingStay(), [a, b])
    _, second = run_rule(OverlappingStay(), [b, a])
    assert len(first) == len(second) == 1
    assert first[0]["alert_id"] == second[0]["alert_id"]
    assert first[0]["evidence"]["stays"] == second[0]["evidence"]["stays"]
    alert = first[0]
    assert alert["evidence"]["overlap_nights"] == 4 and alert["severity"] == "critical"
    assert alert["regions"] == ["440900", "440100"] and alert["review"] == "joint"
    assert set(alert["duties"]) == {"440900", "440100"}
    assert "冒名住院" in alert["duties"]["440900"] and "ward records" in alert["duties"]["440100"]
    assert [s["fund_paid"] for s in alert["evidence"]["stays"]] == ["9000.00", "9000.00"]


def test_shared_dates_without_a_shared_night_are_no_overlap():
    rule = OverlappingStay()
    base = stay("A", "2025-03-01", "2025-03-10")
    transfer = stay("B", "2025-03-10", "2025-03-14", inst="H440100001", treat="440100")
    day_case = stay("C", "2025-03-05", "2025-03-05", inst="H440100003", treat="440100")
    same_hospital = stay("D", "2025-03-03", "2025-03-08")
    _, alerts = run_rule(rule, [base, transfer, day_case, same_hospital])
    assert alerts == []


def test_minimum_nights_and_the_critical_line_are_parameters():
    a = stay("A", "2025-03-01", "2025-03-10")
    one_night = stay("B", "2025-03-09", "2025-03-12", inst="H440900003")
    two_nights = stay("C", "2025-03-08", "2025-03-12", inst="H440900004")
    rule = OverlappingStay(min_overlap_nights=2, critical_overlap_nights=2)
    _, alerts = run_rule(rule, [a, one_night])
    assert alerts == []
    _, alerts = run_rule(rule, [a, two_nights])
    assert [x["severity"] for x in alerts] == ["critical"]
    # Overridden for the insured (pool's) province only.
    rule = OverlappingStay(provinces={"44": {"min_overlap_nights": 3}})
    assert run_rule(rule, [a, two_nights])[1] == []
    assert len(run_rule(rule, [stay("A2", "2025-03-01", "2025-03-10", insured="450100",
                                    person="P450100E9"),
                               stay("C2", "2025-03-08", "2025-03-12", inst="H440900004",
                                    insured="450100", person="P450100E9")])[1]) == 1


def test_three_stays_at_once_give_one_alert_per_shared_span():
    a = stay("A", "2025-03-01", "2025-03-20")
    b = stay("B", "2025-03-05", "2025-03-09", inst="H440900003")
    c = stay("C", "2025-03-12", "2025-03-15", inst="H440900004")
    _, alerts = run_rule(OverlappingStay(), [a, b, c])
    spans = sorted((x["window"]["start"][:10], x["window"]["end"][:10]) for x in alerts)
    assert spans == [("2025-03-05", "2025-03-09"), ("2025-03-12", "2025-03-15")]
    assert all(set(x["settlement_ids"]) in ({"A", "B"}, {"A", "C"}) for x in alerts)


def test_a_redelivered_stay_changes_nothing_and_state_survives_json():
    rule = OverlappingStay()
    a = stay("A", "2025-03-01", "2025-03-10")
    b = stay("B", "2025-03-08", "2025-03-12", inst="H440900003")
    state, _ = run_rule(rule, [a])
    state = round_trip(state)
    state, alerts = run_rule(rule, [b], state)
    assert len(alerts) == 1
    again, repeat = rule.apply(round_trip(state), parse(dumps(b)))
    assert repeat == [] and again == state


def test_stays_older_than_the_horizon_are_dropped():
    rule = OverlappingStay()
    old = stay("OLD", "2025-01-01", "2025-01-05")
    state, _ = run_rule(rule, [old])
    later = (date(2025, 1, 5) + timedelta(days=KEEP_DAYS + 1)).isoformat()
    state, _ = run_rule(rule, [stay("NEW", later, later, inst="H440900003")], state)
    assert set(state["stays"]) == {"NEW"}


def test_a_reversed_stay_withdraws_its_overlap_through_the_pipeline():
    a = stay("A", "2025-03-01", "2025-03-12")
    b = stay("B", "2025-03-08", "2025-03-11", inst="H440100001", treat="440100")
    undo = reversal_of(b, settlement_id="B-R", settled_at="2025-03-13T09:00:00+08:00")
    pipeline = replay(OverlappingStay(), [a, b, undo])
    (alert,) = pipeline.alerts.values()
    assert alert["severity"] == "info" and alert["evidence"]["withdrawn"] is True
    assert alert["evidence"]["reversed"] == ["B"]
    assert alert["detected_at"] == "2025-03-13T09:00:00+08:00"
    # The first revision was the warning; the store keeps both under one id.
    assert [x["severity"] for x in pipeline.emitted] == ["critical", "info"]
    assert len({x["alert_id"] for x in pipeline.emitted}) == 1


def test_a_reversal_of_a_stay_that_overlapped_nothing_raises_nothing():
    a = stay("A", "2025-03-01", "2025-03-05")
    b = stay("B", "2025-03-09", "2025-03-11", inst="H440900003")
    undo = reversal_of(b, settlement_id="B-R", settled_at="2025-03-12T09:00:00+08:00")
    assert replay(OverlappingStay(), [a, b, undo]).alerts == {}


@pytest.mark.parametrize("rule_class", [OverlappingStay, SplitAdmission])
def test_arrival_order_within_the_lateness_does_not_change_the_alerts(rule_class):
    """Live, a person's records reach the rule through several admission partitions in
    any interleaving. The verdicts are taken at the day's close in settlement order, so
    every arrival order gives the same alerts — B's finding raised and withdrawn,
    whether its reversal arrived before or after its partner (judged on arrival, a
    reversal first meant no alert at all, and the replay of a file disagreed)."""
    from itertools import permutations

    a = stay("A", "2025-03-01", "2025-03-12", hour=9)
    b = stay("B", "2025-03-10" if rule_class is OverlappingStay else "2025-03-14",
             "2025-03-15", inst="H440100001" if rule_class is OverlappingStay
             else "H440900002", treat="440100" if rule_class is OverlappingStay
             else "440900", hour=10)
    b_undone = reversal_of(b, settlement_id="B-R", settled_at="2025-03-15T16:00:00+08:00")
    c = stay("C", "2025-03-11", "2025-03-16", inst="H440100009", treat="440100", hour=11)
    outcomes = {}
    for order in permutations([a, b, b_undone, c]):
        _, alerts = run_rule(rule_class(), list(order))
        outcomes[tuple(r["settlement_id"] for r in order)] = orjson.dumps(
            sorted(alerts, key=lambda x: (x["alert_id"], x["severity"])))
    assert len(set(outcomes.values())) == 1, "the alerts depend on the arrival order"
    final = {}
    for x in run_rule(rule_class(), [c, b_undone, b, a])[1]:
        final[x["alert_id"]] = x
    withdrawn = [x for x in final.values() if x["evidence"].get("withdrawn")]
    assert withdrawn and all(x["severity"] == "info" for x in withdrawn)
    standing = [x for x in final.values() if not x["evidence"].get("withdrawn")]
    assert all("B" not in x["settlement_ids"] for x in standing)
    if rule_class is OverlappingStay:
        assert standing, "A and C still overlap"


# --------------------------------------------------------------------------- split_admission

@pytest.mark.parametrize("gap,fires", [(0, True), (1, True), (15, True), (16, False)])
def test_the_readmission_window_is_inclusive(gap, fires):
    readmitted = (date(2025, 3, 8) + timedelta(days=gap)).isoformat()
    end = (date.fromisoformat(readmitted) + timedelta(days=4)).isoformat()
    _, alerts = run_rule(SplitAdmission(), [stay("A", "2025-03-01", "2025-03-08"),
                                            stay("B", readmitted, end)])
    assert bool(alerts) is fires
    if fires:
        assert alerts[0]["evidence"]["gap_days"] == gap
        assert alerts[0]["severity"] == ("critical" if gap <= 1 else "warning")


def test_the_same_category_is_the_condition_and_the_gap_is_a_parameter():
    first = stay("A", "2025-03-01", "2025-03-08", dx=("I63.9", "I10"))
    other_code = stay("B", "2025-03-12", "2025-03-15", dx=("I63.4",))
    other_condition = stay("C", "2025-03-12", "2025-03-15", dx=("I61.9",))
    assert len(run_rule(SplitAdmission(), [first, other_code])[1]) == 1
    assert run_rule(SplitAdmission(), [first, other_condition])[1] == []
    assert run_rule(SplitAdmission(max_gap_days=3), [first, other_code])[1] == []


def test_overlapping_stays_at_one_hospital_and_planned_cycles_are_no_split():
    a = stay("A", "2025-03-01", "2025-03-08")
    overlapping = stay("B", "2025-03-06", "2025-03-12")
    assert run_rule(SplitAdmission(), [a, overlapping])[1] == []
    chemo = [stay("C1", "2025-03-01", "2025-03-03", dx=("Z51.1", "C34.9")),
             stay("C2", "2025-03-15", "2025-03-17", dx=("Z51.1", "C34.9"))]
    assert run_rule(SplitAdmission(), chemo)[1] == []
    assert len(run_rule(SplitAdmission(planned_categories=""), chemo)[1]) == 1


def test_planned_categories_are_checked_when_the_rule_is_made():
    with pytest.raises(RuleConfigError, match="planned_categories: 'Z5'"):
        SplitAdmission(planned_categories="Z49,Z5")


def test_a_chain_of_readmissions_gives_an_alert_per_pair_in_any_order():
    stays = [stay("A", "2025-03-01", "2025-03-05"), stay("B", "2025-03-07", "2025-03-10"),
             stay("C", "2025-03-30", "2025-04-02")]
    _, forward = run_rule(SplitAdmission(), stays)
    _, backward = run_rule(SplitAdmission(), stays[::-1])
    assert [a["settlement_ids"] for a in forward] == [["A", "B"]]
    assert sorted(a["alert_id"] for a in forward) == sorted(a["alert_id"] for a in backward)
    close = stays[:2] + [stay("C", "2025-03-12", "2025-03-14")]
    _, alerts = run_rule(SplitAdmission(), close)
    assert sorted(tuple(a["settlement_ids"]) for a in alerts) == [("A", "B"), ("A", "C"),
                                                                  ("B", "C")]


def test_a_cross_region_split_is_a_joint_review_and_a_reversal_withdraws_it():
    a = stay("A", "2025-03-01", "2025-03-08", insured="450100", person="P450100E1")
    b = stay("B", "2025-03-10", "2025-03-14", insured="450100", person="P450100E1")
    undo = reversal_of(a, settlement_id="A-R", settled_at="2025-03-16T10:00:00+08:00")
    pipeline = replay(SplitAdmission(), [a, b, undo])
    first, last = pipeline.emitted
    assert first["review"] == "joint" and first["regions"] == ["440900", "450100"]
    assert set(first["duties"]) == {"440900", "450100"}
    assert last["alert_id"] == first["alert_id"] and last["evidence"]["withdrawn"] is True


# --------------------------------------------------------------------------- pharmacy chains

START = datetime(2025, 3, 3, tzinfo=SHANGHAI)  # a Monday


def sale(day, branch, region, person, yuan, hour=10, chain="PCH9", sid=None, insured=None):
    fund = f"{yuan:.2f}"
    return settlement(settlement_id=sid or f"{branch}-{day}-{person}-{hour}",
                      settled_at=(START + timedelta(days=day, hours=hour)).isoformat(),
                      person_id=person, institution_id=branch, institution_type="pharmacy",
                      institution_level=None, chain_id=chain, treatment_region=region,
                      insured_region=insured or region, visit_type="pharmacy",
                      diagnoses=["I10"], total_cost=fund, fund_paid=fund,
                      personal_paid="0.00", filing="none" if insured in (None, region)
                      else "temporary")


def trading(days, branches, amount, per_day=3):
    """``per_day`` sales a day at each branch, at ``amount(day, branch, k)`` yuan; the
    amounts vary by a fixed pattern, as real weeks do."""
    out = []
    for day in days:
        for branch, region in branches:
            for k in range(per_day):
                out.append(sale(day, branch, region, f"C{region}{(day * 7 + k) % 40}",
                                amount(day, branch, k), hour=9 + 3 * k))
    return out


def judge(rule, records, through_day):
    """Feed the sales, then close every day up to ``through_day``: (state, alerts)."""
    state, alerts = None, []
    for rec in records:
        state, fired = rule.apply(state, parse(dumps(rec)))
        alerts += fired
    for day in range(through_day + 1):
        state, fired = rule.close(state, START + timedelta(days=day + 1))
        alerts += fired
    return state, alerts


GD, GX = ("P440300001", "440300"), ("P450100001", "450100")


def noisy(day, branch, k):
    return 40 + (day * 13 + k * 29 + len(branch)) % 37


def test_one_provinces_branches_inflating_are_found_though_the_chain_hides_it():
    # Guangdong's branch sells three times what Guangxi's does; from day 42 Guangxi's
    # invoices are doubled: +100% there, about +25% for the chain as a whole.
    records = trading(range(56), [GD], noisy, per_day=9)
    records += trading(range(56), [GX], lambda d, b, k: noisy(d, b, k) * (2 if d >= 42 else 1))
    _, alerts = judge(PharmacyChainAnomaly(), records, 55)
    assert alerts, "the province-45 branches' jump was not found"
    first = min(alerts, key=lambda a: a["detected_at"])
    assert first["evidence"]["scope"] == "45"
    assert first["evidence"]["scopes"]["chain"]["growth"] < 0.5 < first["evidence"]["growth"]
    assert first["regions"][0] == "450100" and first["review"] == "joint"
    assert "进销存" in first["duties"]["450100"]
    assert first["detected_at"] >= (START + timedelta(days=43)).isoformat()


def test_steady_trading_a_single_noisy_day_and_one_province_chains_raise_nothing():
    steady = trading(range(70), [GD, GX], noisy)
    assert judge(PharmacyChainAnomaly(), steady, 69)[1] == []
    # One big prescription (a targeted cancer drug) is left out with the largest sales.
    spike = steady + [sale(50, *GX, "C-onc", 2500)]
    assert judge(PharmacyChainAnomaly(), spike, 69)[1] == []
    # A chain whose branches are all in one province is its own region's matter.
    local = trading(range(56), [GD, ("P440100001", "440100")],
                    lambda d, b, k: noisy(d, b, k) * (3 if d >= 42 else 1), per_day=3)
    assert judge(PharmacyChainAnomaly(), local, 55)[1] == []


def test_the_registry_makes_a_chain_cross_province_before_its_other_branches_trade():
    local = trading(range(56), [GD], lambda d, b, k: noisy(d, b, k) * (3 if d >= 42 else 1),
                    per_day=4)
    registry = Registry.from_dict({"schema": "pools/v1", "institutions": [
        {"id": GD[0], "region": GD[1], "type": "pharmacy", "chain_id": "PCH9"},
        {"id": GX[0], "region": GX[1], "type": "pharmacy", "chain_id": "PCH9"}]})
    assert judge(PharmacyChainAnomaly(), local, 55)[1] == []
    _, alerts = judge(PharmacyChainAnomaly(registry=registry), local, 55)
    assert alerts and alerts[0]["regions"] == ["440300", "450100"]


def test_shared_persons_need_two_provinces_within_the_hours_and_two_persons():
    def card(person, day, hours):
        return [sale(day, *GD, person, 120, hour=9, insured="440900"),
                sale(day, *GX, person, 130, hour=9 + hours, insured="440900")]
    rule = PharmacyChainAnomaly()
    assert judge(rule, card("X1", 3, 5), 10)[1] == []  # one person: a traveller
    assert judge(rule, card("X1", 3, 5) + card("X2", 4, 30), 10)[1] == []  # 30 h apart
    _, alerts = judge(rule, card("X1", 3, 5) + card("X2", 4, 20), 10)
    (alert,) = alerts
    assert alert["evidence"]["shared_person_count"] == 2
    assert alert["regions"] == ["440300", "450100", "440900"]
    assert "Contact the listed persons" in alert["duties"]["440900"]
    assert judge(PharmacyChainAnomaly(same_person_hours=12),
                 card("X1", 3, 5) + card("X2", 4, 20), 10)[1] == []


def test_a_reversed_sale_no_longer_makes_a_person_shared_through_the_pipeline():
    sales = [sale(3, *GD, "X1", 120, hour=9), sale(3, *GX, "X1", 130, hour=14),
             sale(3, *GD, "X2", 120, hour=10), sale(3, *GX, "X2", 130, hour=15)]
    kept = replay(PharmacyChainAnomaly(), sales)
    assert len(kept.alerts) == 1
    undo = reversal_of(sales[3], settlement_id="X2-R",
                       settled_at=(START + timedelta(days=3, hours=16)).isoformat())
    assert replay(PharmacyChainAnomaly(), sales + [undo]).alerts == {}


def test_close_is_idempotent_and_the_verdict_ignores_arrival_order_within_a_day():
    records = trading(range(56), [GD, GX],
                      lambda d, b, k: noisy(d, b, k) * (3 if d >= 42 else 1))
    rule = PharmacyChainAnomaly()
    state, alerts = judge(rule, records, 55)
    again, none = rule.close(round_trip(state), START + timedelta(days=56))
    assert none == [] and again == round_trip(state)
    shuffled = sorted(records, key=lambda r: (r["settled_at"][:10], r["settlement_id"][::-1]))
    _, other = judge(PharmacyChainAnomaly(), shuffled, 55)
    assert [a["alert_id"] for a in alerts] == [a["alert_id"] for a in other]
    assert [a["evidence"]["growth"] for a in alerts] == [a["evidence"]["growth"] for a in other]
    # Bounded: no more day aggregates than the windows need, settlements for 9 days.
    assert len(state["days"]) <= 49 and len(state["det"]) <= 9


def test_a_reversal_older_than_the_kept_details_is_taken_out_on_its_own_day():
    original = sale(0, *GD, "X1", 150)
    undo = reversal_of(original, settlement_id="X1-R",
                       settled_at=(START + timedelta(days=12, hours=9)).isoformat())
    rule = PharmacyChainAnomaly()
    # Closed after day 12, before its days are folded away: both lines are held.
    state, _ = run_rule(rule, [original, undo], until=START + timedelta(days=13))
    lines = [detail.get(day, GD[0]) for day in state["days"].values()]
    assert [line[0] for line in lines] == [1, -1]
    assert [sum(b[i] for b in lines) for i in (0, 1, 3)] == [0, 0, 0]  # count, fen, yuan²
    # ... once: the reversal re-delivered changes nothing.
    assert rule.apply(state, parse(dumps(undo))) == (state, [])
