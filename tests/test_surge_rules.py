"""Focused tests of ``cross_province_surge`` and ``siphon_shift`` (edge cases the shared
fixtures do not reach). Events are real contract records (``tests.factories``) run
through the offline driver — parse, admission, the rule, and the watermark that
closes days and months — with the state as JSON between events, as it is in the
live worker's Faust table."""
from __future__ import annotations

from datetime import date, timedelta

import orjson
import pytest

from rules.builtin.cross_province_surge import DETAIL_DAYS, KEPT_BEHIND, CrossProvinceSurge
from rules.builtin.siphon_shift import SiphonShift
from rules.core import DetectionCore, RuleConfigError
from rules.registry import Registry
from streams.offline import OfflinePipeline
from streams.records import parse
from tests.factories import D0, at as _at, bill, dumps, reversal_of, settlement, weeks
from rules.fixtures import JsonTable

def run(rule, events, pipeline=None):
    """Feed contract records through the offline driver; (the rule's state for the
    first record's key, every alert revision emitted). Pass ``pipeline`` to go on."""
    pipeline = pipeline or OfflinePipeline(DetectionCore([rule]), state=JsonTable())
    start = len(pipeline.emitted)
    for i, record in enumerate(events):
        outcome = pipeline.feed(dumps(record), source=f"test/{start}/{i}")
        assert outcome == "accepted", pipeline.deadletters[-1]["reasons"]
    key = rule.key(parse(dumps(events[0]))) if events else None
    stored = pipeline.state.get(f"{rule.rule_id}|{key}")
    return (stored["v"] if stored else None), pipeline.emitted[start:]


# ---------------------------------------------------------------- cross_province_surge

def test_exactly_at_the_threshold_is_no_surge():
    rule = CrossProvinceSurge()
    # 2 × 1500 a day = 21000 a week; 1800 a bill = exactly +20%.
    _, at = run(rule, weeks(1500, 1800))
    assert at == []
    _, above = run(rule, weeks(1500, 1801))
    assert [a["severity"] for a in above][-1] == "warning"
    assert above[-1]["evidence"]["growth"] == pytest.approx(0.2006, abs=1e-4)


def test_an_institution_with_too_little_history_is_not_judged():
    rule = CrossProvinceSurge()
    # Seen from day 7: the window ending day 41 has 35 days of history → judged.
    _, enough = run(rule, weeks(1500, 2500, first_day=7))
    assert enough and enough[-1]["severity"] == "critical"
    # Seen from day 8: 34 days at the last surge day, and day 42 (35 days) is not yet
    # closed → nothing.
    _, short = run(rule, weeks(1500, 2500, first_day=8))
    assert short == []
    # A longer history requirement holds it back too.
    _, held = run(CrossProvinceSurge(min_history_days=60), weeks(1500, 2500))
    assert held == []


def test_volume_guards():
    # 2 bills a day at 1400: a 19600-yuan baseline week is under min_baseline_yuan.
    assert run(CrossProvinceSurge(), weeks(1400, 3000))[1] == []
    assert run(CrossProvinceSurge(min_baseline_yuan=19000), weeks(1400, 3000))[1]
    # One bill a day: 7 a week, under min_current_settlements and min_baseline_settlements.
    assert run(CrossProvinceSurge(), weeks(3500, 7000, per_day=1))[1] == []
    assert run(CrossProvinceSurge(min_current_settlements=7, min_baseline_settlements=7),
               weeks(3500, 7000, per_day=1))[1]


def test_the_spread_guard_ignores_one_costly_stay_in_a_noisy_baseline():
    # 2 bills a day at 1500 (21000 a week) and a 15000-yuan stay on days 10 and 24: the
    # baseline windows alternate 36000 / 21000 (mean 28500, sd 7500).
    lumps = {10: 15000, 24: 15000, 40: 16000}
    events = []
    for day in range(42):
        events += [bill(day, 1500, hour=9), bill(day, 1500, hour=10)]
        if day in lumps:
            events.append(bill(day, lumps[day], hour=15))
    events.append(bill(42, 100, insured="440900", hour=9))
    # One costly stay in the last week: 37000, +30% but only 1.1 sd above the baseline.
    assert run(CrossProvinceSurge(), events)[1] == []
    fired = run(CrossProvinceSurge(min_z=0), events)[1]
    assert fired[-1]["evidence"]["growth"] == pytest.approx(0.2982, abs=1e-4)
    assert fired[-1]["evidence"]["z"] == pytest.approx(1.13, abs=0.01)


def test_a_reversal_takes_its_original_out_of_its_day():
    rule = CrossProvinceSurge()
    events = weeks(1500, 1500)
    big = bill(40, 9000, hour=11, sid="BIG")
    # The big bill alone is a +43% week; reversed the same afternoon it counts for nothing.
    with_big = events[:-1] + [big] + events[-1:]
    assert run(rule, with_big)[1]
    reversed_ = events[:-1] + [big, reversal_of(big, settled_at=_at(40, 16))] + events[-1:]
    state, fired = run(rule, reversed_)
    assert fired == []
    day = (D0 + timedelta(days=40)).isoformat()
    assert state["days"][day]["n"] == 2 and state["days"][day]["a"][0] == 300000
    assert state["det"][day]["x"] == ["BIG"]


def test_a_reversal_of_an_original_no_longer_held_counts_on_its_own_day():
    rule = CrossProvinceSurge()
    old = bill(0, 5000, sid="OLD")
    events = [old] + [bill(d, 1000) for d in range(1, 31)]
    events.append(reversal_of(old, settled_at=_at(30, 15)))
    state, _ = run(rule, events)
    day30 = state["days"][(D0 + timedelta(days=30)).isoformat()]
    assert day30["n"] == 0 and day30["a"][0] == 100000 - 500000
    # A re-delivered reversal changes nothing.
    again, _ = rule.apply(state, parse(dumps(reversal_of(old, settlement_id=events[-1][
        "settlement_id"], settled_at=_at(30, 15)))))
    assert again == state


def test_a_late_settlement_counts_in_the_next_window_judged():
    rule = CrossProvinceSurge()
    events = weeks(1500, 1950)  # +30% once the whole surge week is in
    late = next(e for e in events if e["settled_at"].startswith(
        (D0 + timedelta(days=40)).isoformat()))
    events.remove(late)
    # It arrives after day 41's bills: window ending 40 was judged without it.
    events.insert(-1, late)
    state, fired = run(rule, events)
    last = fired[-1]
    assert last["evidence"]["current_window"]["end"].startswith("2025-04-14")  # ends day 41
    assert last["evidence"]["current"] == "27300.00" and last["evidence"]["growth"] == 0.3
    # A settlement only counts; judging is for the day's close.
    probe = parse(dumps(bill(39, 1000, hour=20, sid="LATE-2")))
    assert rule.apply(state, probe)[1] == []


def test_escalation_keeps_one_alert_id_and_a_persisting_surge_reminds_weekly():
    rule = CrossProvinceSurge()
    # +30% from day 35, +80% from day 39, still there until day 55.
    events = []
    for day in range(56):
        yuan = 1500 if day < 35 else 1950 if day < 39 else 2700
        events += [bill(day, yuan, hour=9), bill(day, yuan, hour=10)]
    events.append(bill(56, 100, insured="440900"))
    _, fired = run(rule, events)
    ids = list(dict.fromkeys(a["alert_id"] for a in fired))
    first = [a for a in fired if a["alert_id"] == ids[0]]
    assert first[0]["severity"] == "warning"
    assert first[-1]["severity"] == "critical"
    growths = [a["evidence"]["growth"] for a in first]
    assert growths == sorted(growths) and len(set(growths)) == len(growths)
    # The episode covers the windows ending D .. D+6; a surge still there opens a new one
    # (until the surge days enter the baseline windows and it is the new normal).
    assert len(ids) == 2
    starts = [date.fromisoformat(a["window"]["start"][:10]) for a in fired
              if a["alert_id"] in ids[:2]]
    assert (max(starts) - min(starts)).days == 7


def test_per_province_override_changes_the_outcome():
    rule = CrossProvinceSurge(provinces={"44": {"threshold": 0.5}})
    # +30% at a Guangdong hospital: under Guangdong's 50%.
    assert run(rule, weeks(1500, 1950))[1] == []
    # The same at a Guangxi hospital (patients from Guangdong) keeps the default 20%.
    fired = run(rule, weeks(1500, 1950, inst="H450100001", treat="450100",
                            insured="440900"))[1]
    assert fired and fired[-1]["evidence"]["threshold"] == 0.2
    assert fired[-1]["regions"] == ["450100", "440900"]


def test_same_province_patients_do_not_count():
    events = weeks(1500, 1500)
    extra = [bill(d, 3000, insured="440100", hour=14) for d in range(35, 42)]
    assert run(CrossProvinceSurge(), events[:-1] + extra + events[-1:])[1] == []


def test_regions_named_are_those_covering_the_increase():
    events = []
    for day in range(42):
        s = day >= 35
        events += [bill(day, 3000 if s else 1500, insured="450100", hour=9),    # +10500/wk
                   bill(day, 2250 if s else 1500, insured="430100", hour=10),   # +5250/wk
                   bill(day, 1700 if s else 1500, insured="360100", hour=11),   # +1400/wk
                   bill(day, 1400 if s else 1500, insured="450300", hour=12)]   # -700/wk
    events.append(bill(42, 100, insured="440900"))
    alert = run(CrossProvinceSurge(), events)[1][-1]
    # 10500 + 5250 = 92% of the 17150 that grew → two insured regions, largest first.
    assert alert["regions"] == ["440900", "450100", "430100"]
    assert set(alert["duties"]) == {"440900", "450100", "430100"}
    assert alert["evidence"]["insured_regions"]["450300"]["increase"] == "-700.00"
    one = run(CrossProvinceSurge(max_insured_regions=1), events)[1][-1]
    assert one["regions"] == ["440900", "450100"]


def test_measure_fund_paid_and_bad_measure():
    fired = run(CrossProvinceSurge(measure="fund_paid", min_baseline_yuan=12000),
                weeks(1500, 1950))[1]
    assert fired[-1]["evidence"]["measure"] == "fund_paid"
    assert fired[-1]["evidence"]["current"] == "16380.00"  # 14 × 1170
    with pytest.raises(RuleConfigError, match="measure"):
        CrossProvinceSurge(measure="count")
    with pytest.raises(RuleConfigError, match="measure"):
        CrossProvinceSurge(provinces={"44": {"measure": "cost"}})


def test_a_redelivered_settlement_changes_nothing():
    rule = CrossProvinceSurge()
    event = parse(dumps(bill(3, 1000)))
    state, _ = rule.apply(None, event)
    assert rule.apply(state, event) == (state, [])


def test_state_stays_bounded_after_200_days():
    rule = CrossProvinceSurge()
    pipeline = OfflinePipeline(DetectionCore([rule]), state=JsonTable())
    sizes = []
    for day in range(200):
        events = [bill(day, 1000 + 37 * (day % 11), hour=9 + k, insured=r)
                  for k, r in enumerate(("450100", "430100", "360100"))]
        events.append(bill(day, 500, insured="440900", hour=15))
        state, _ = run(rule, events, pipeline)
        sizes.append(len(orjson.dumps(state)))
    # Judged through day 198 (the watermark is 6 hours behind day 199's last bill):
    # the next window and its baseline (days 165-199), ids for 186-199.
    assert len(state["days"]) <= KEPT_BEHIND and len(state["det"]) <= DETAIL_DAYS
    assert min(state["days"]) == (D0 + timedelta(days=200 - KEPT_BEHIND)).isoformat()
    assert max(sizes[100:]) <= max(sizes[40:60]) * 1.1  # flat once the horizon is full


# ---------------------------------------------------------------- siphon_shift

REGISTRY = Registry.from_dict({"schema": "pools/v1",
                               "provinces": {"44": {"name": "广东省", "capital": "440100"}}})


def stay(month: int, n: int, capital: bool, *, region: str = "440900", level: int = 3,
         yuan: float = 10000, day: int | None = None, record: bool = True, **extra):
    dom = day if day is not None else 1 + n % 27
    dis = date(2025, month, dom)
    fund = round(yuan * 0.7, 2)
    rec = settlement(
        settlement_id=f"{region}-{month}-{n}-{int(capital)}", person_id=f"P{region}-{month}-{n}",
        settled_at=f"{dis.isoformat()}T10:00:00+08:00", insured_region=region,
        treatment_region="440100" if capital else region,
        institution_id=f"H440100{level:03d}" if capital else f"H{region}002",
        institution_level=level if capital else 2, visit_type="inpatient",
        admitted_on=(dis - timedelta(days=3)).isoformat(), discharged_on=dis.isoformat(),
        total_cost=f"{yuan:.2f}", fund_paid=f"{fund:.2f}", personal_paid=f"{yuan - fund:.2f}",
        filing="temporary" if capital else "none", **extra)
    return rec if record else parse(dumps(rec))


def months(plan: dict[int, tuple[int, int]], region: str = "440900", close: bool = True):
    """{month: (stays, of which at the capital's level-3 hospitals)} in date order; then
    (``close``) a local stay on the 2nd of the month after, which closes the last."""
    out = []
    for m, (n, c) in sorted(plan.items()):
        # Capital stays spread evenly over the month.
        marks = {round(i * n / c) for i in range(c)} if c else set()
        out += [stay(m, i, i in marks, region=region) for i in range(n)]
    if close and plan:
        out.append(stay(max(plan) + 1, 999, False, region=region, day=2))
    return out


BASE = {1: (40, 6), 2: (40, 6), 3: (40, 6)}  # 15%


def test_siphon_needs_a_registry_and_ignores_the_capital_pool():
    events = months({**BASE, 4: (40, 30)})
    assert run(SiphonShift(), events) == (None, [])
    reg = Registry.from_dict({"schema": "pools/v1", "provinces": {"44": {"name": "x"}}})
    assert run(SiphonShift(registry=reg), events) == (None, [])  # no capital known
    capital_pool = months({**BASE, 4: (40, 30)}, region="440100")
    assert run(SiphonShift(registry=REGISTRY), capital_pool) == (None, [])


def test_siphon_fires_once_when_the_month_is_complete():
    rule = SiphonShift(registry=REGISTRY)
    events = months({**BASE, 4: (40, 16)})  # 15% → 40%; May's first stay closes April
    _, fired = run(rule, events)
    assert len(fired) == 1
    alert = fired[0]
    assert alert["evidence"]["stays"] == 40 and alert["evidence"]["capital_stays"] == 16
    assert alert["evidence"]["current_share"] == 0.4
    assert alert["evidence"]["baseline_share"] == 0.15
    assert alert["severity"] == "critical" and alert["review"] == "single"
    assert alert["regions"] == ["440900", "440100"]
    assert set(alert["duties"]) == {"440900", "440100"}
    assert alert["detected_at"] == "2025-05-01T00:00:00+08:00"
    assert alert["window"] == {"start": "2025-04-01T00:00:00+08:00",
                               "end": "2025-05-01T00:00:00+08:00"}
    # Nothing before the month is over: without May's stay, April is still open.
    assert run(SiphonShift(registry=REGISTRY), events[:-1])[1] == []


def test_siphon_level_2_capital_hospitals_do_not_count():
    events = months(BASE)
    events += [stay(4, i, i % 2 == 0, level=2) for i in range(40)]
    assert run(SiphonShift(registry=REGISTRY), events)[1] == []


def test_siphon_needs_three_baseline_months_and_min_stays():
    assert run(SiphonShift(registry=REGISTRY), months({2: (40, 6), 3: (40, 6),
                                                     4: (40, 30)}))[1] == []
    thin = {1: (15, 2), 2: (40, 6), 3: (40, 6), 4: (40, 30)}
    assert run(SiphonShift(registry=REGISTRY), months(thin))[1] == []
    assert run(SiphonShift(registry=REGISTRY, min_stays=15), months(thin))[1]


def test_siphon_z_guard_holds_back_small_noisy_months():
    # 20 stays at 35% against 15%: +20 pp, but z ≈ 2.2 with so few stays.
    plan = {1: (20, 3), 2: (20, 3), 3: (20, 3), 4: (20, 7)}
    assert run(SiphonShift(registry=REGISTRY), months(plan))[1] == []
    fired = run(SiphonShift(registry=REGISTRY, min_z=0), months(plan))[1]
    assert fired[-1]["severity"] == "warning" and fired[-1]["evidence"]["excess_pp"] == 20.0


def test_siphon_judges_the_whole_month_not_an_early_burst():
    rule = SiphonShift(registry=REGISTRY)
    early = [stay(4, i, i < 12, day=1 + i // 3) for i in range(24)]  # 50% early in April
    later = [stay(4, 100 + i, False, day=10 + i // 4) for i in range(56)]  # then local
    closing = [stay(5, 999, False, day=2)]
    # April as a whole: 12 of 80 = 15%, the baseline's share.
    assert run(rule, months(BASE, close=False) + early + later + closing)[1] == []


def test_siphon_per_province_override():
    plan = {1: (100, 15), 2: (100, 15), 3: (100, 15), 4: (100, 30)}  # 15% → 30%: +15 pp
    assert run(SiphonShift(registry=REGISTRY), months(plan))[1]
    assert run(SiphonShift(registry=REGISTRY, provinces={"44": {"margin_pp": 20.0}}),
               months(plan))[1] == []


def test_siphon_reversal_counts_in_its_month():
    rule = SiphonShift(registry=REGISTRY)
    original = stay(4, 0, True)
    state, _ = run(rule, months(BASE, close=False) + [original,
                                         reversal_of(original,
                                                     settled_at="2025-05-02T10:00:00+08:00")])
    assert state["months"]["2025-04"]["c"] == 1
    may = state["months"]["2025-05"]
    assert may["n"] == -1 and may["c"] == -1 and may["cf"] == -700000


def test_siphon_state_stays_bounded():
    rule = SiphonShift(registry=REGISTRY)
    pipeline = OfflinePipeline(DetectionCore([rule]), state=JsonTable())
    for m in range(1, 13):
        state, _ = run(rule, [stay(m, i, i % 5 == 0) for i in range(60)], pipeline)
    # November is the last month closed: December's baseline (Sep-Nov) and December.
    assert state["closed"] == "2025-11"
    assert sorted(state["months"]) == ["2025-09", "2025-10", "2025-11", "2025-12"]
    assert all(len(v["ids"]) <= 50 for v in state["months"].values())
