"""phantom_bed: its features, and the online model's determinism, checkpoint/restore,
order independence and live = replay scores (through the real embedded broker)."""
from __future__ import annotations

import asyncio
import random
import uuid
from datetime import date, datetime

import orjson
import pytest

from detectors.features import FEATURES, history_entry, inpatient_features
from detectors.model import StayModel, restore
from rules.builtin.phantom_bed import PhantomBed
from rules.core import DetectionCore, load_rules
from rules.fixtures import JsonTable
from streams.offline import OfflinePipeline
from streams.records import Rejected, parse
from streams.simulate import simulate
from streams.watermark import DEFAULT_LATENESS_S, event_ms, last_midnight
from tests.factories import dumps, reversal_of, settlement


def _event(**overrides):
    return parse(dumps(settlement(**overrides)))


def _stay(**overrides):
    base = {"person_id": "P1", "institution_id": "H440100001", "admitted_on": "2025-03-03",
            "discharged_on": "2025-03-17", "settled_at": "2025-03-17T11:00:00+08:00"}
    return _event(**{**base, **overrides})


def _visit(sid, when, institution="P440100007", visit_type="pharmacy"):
    kind = "pharmacy" if visit_type == "pharmacy" else "primary_care"
    return _event(settlement_id=sid, person_id="P1", settled_at=when, visit_type=visit_type,
                  institution_id=institution, institution_type=kind,
                  **({} if visit_type == "pharmacy" else {"institution_level": 1}),
                  fund_paid="60.00", personal_paid="20.00")


# ----------------------------------------------------------------------- features

def test_features_of_a_stay_from_its_items_and_the_registry():
    stay = _stay(age=71)
    f = inpatient_features(stay, [], {"beds": 1200, "level": 3})
    assert f["length_of_stay"] == 14.0
    assert f["cost_per_day"] == round(stay.total_cost_fen / 100 / 14, 2)
    shares = {i.category: i.amount_fen / stay.total_cost_fen for i in stay.items}
    for category in ("bed", "drug", "exam", "treatment", "nursing"):
        assert f[f"{category}_share"] == round(shares.get(category, 0.0), 4)
    assert (f["beds"], f["level"], f["age"]) == (1200.0, 3.0, 71.0)
    assert f["admit_weekday"] == float(date(2025, 3, 3).weekday()) == 0.0
    assert f["cross_region"] == 0.0
    assert inpatient_features(_stay(insured_region="440900", filing="temporary"),
                              [])["cross_region"] == 1.0
    assert list(f) == list(FEATURES)


def test_only_other_institutions_during_the_stay_and_before_its_settlement_count():
    stay = _stay()
    history = [history_entry(e) for e in (
        _visit("V-before", "2025-03-01T10:00:00+08:00"),            # before admission
        _visit("V-in-1", "2025-03-05T10:00:00+08:00"),              # counts
        _visit("V-in-2", "2025-03-05T16:00:00+08:00", "C440100003", "outpatient"),  # counts
        _visit("V-in-3", "2025-03-09T10:00:00+08:00"),              # counts, another day
        _visit("V-own", "2025-03-10T10:00:00+08:00", "H440100001", "outpatient"),  # its own
        _visit("V-after", "2025-03-17T15:00:00+08:00"),             # the future: settled later
    )]
    f = inpatient_features(stay, history)
    assert (f["visits_elsewhere"], f["days_elsewhere"]) == (3.0, 2.0)
    # The same history in any order: the features do not depend on arrival.
    assert inpatient_features(stay, history[::-1]) == f


def test_the_rule_never_looks_at_what_was_settled_after_the_stay(tmp_path):
    """A visit settled after the stay but *delivered* before it (a record out of order)
    is not counted: the rule scores at the day's close, from event time."""
    rule = PhantomBed(warmup=0)
    later = _visit("V-after", "2025-03-17T15:00:00+08:00")
    during = _visit("V-during", "2025-03-06T10:00:00+08:00")
    state, _ = rule.apply(None, later)
    state, _ = rule.apply(state, _stay())
    state, _ = rule.apply(state, during)
    midnight = datetime.fromisoformat("2025-03-18T00:00:00+08:00")
    rule.close_shared(0, {"P1": state}, None, midnight)
    model = rule._models[0]
    assert model.n == 1
    assert model._mean["visits_elsewhere"] == 1.0  # V-during only


def test_reversals_count_by_their_event_time_not_by_when_they_arrived():
    """Whether a reversal arrives before or after a stay's day is closed differs
    between a live worker and a replay; its event time does not."""
    def reversal(original, when):
        return parse(dumps(reversal_of(original, settled_at=when)))

    def stay(**overrides):
        return settlement(**{"person_id": "P1", "institution_id": "H440100001",
                             "admitted_on": "2025-03-03", "discharged_on": "2025-03-17",
                             "settled_at": "2025-03-17T11:00:00+08:00", **overrides})

    def visit(sid, when):
        return settlement(settlement_id=sid, person_id="P1", settled_at=when,
                          visit_type="pharmacy", institution_id="P440100007",
                          institution_type="pharmacy", fund_paid="60.00",
                          personal_paid="20.00")

    midnight = datetime.fromisoformat("2025-03-20T00:00:00+08:00")
    same_day, next_day = stay(settlement_id="S-same"), stay(settlement_id="S-next",
                                                            person_id="P2")
    gone = visit("V-gone", "2025-03-06T10:00:00+08:00")
    kept = visit("V-kept", "2025-03-07T10:00:00+08:00")
    rule = PhantomBed(warmup=0)
    states = {}
    for key, event in (("P1", parse(dumps(gone))),
                       ("P1", reversal(gone, "2025-03-08T09:00:00+08:00")),
                       ("P1", parse(dumps(kept))), ("P1", parse(dumps(same_day))),
                       ("P1", reversal(kept, "2025-03-18T09:00:00+08:00")),  # after the stay
                       ("P1", reversal(same_day, "2025-03-17T18:00:00+08:00")),
                       ("P2", parse(dumps(next_day))),
                       ("P2", reversal(next_day, "2025-03-18T08:00:00+08:00"))):
        states[key], _ = rule.apply(states.get(key), event)
    changed, shared, _, scores = rule.close_shared(0, states, None, midnight)
    assert [s["settlement_id"] for s in scores] == ["S-next"]
    assert all(not state["due"] for state in changed.values()) and set(changed) == {"P1", "P2"}
    # V-kept's reversal came after S-same's settlement: for a stay it would still count
    f = inpatient_features(_stay(settlement_id="S-other"), states["P1"]["h"])
    assert f["visits_elsewhere"] == 1.0


def test_configuration_that_cannot_work_is_refused():
    from rules.core import RuleConfigError, config_problems, discover

    problems = config_problems({"phantom_bed": {"model": "forest",
                                                "provinces": {"44": {"quantile": 0.9}}}},
                               discover())
    assert problems == ["rules.phantom_bed.model: 'forest' is not one of hst, svm, loda, lof"]
    problems = config_problems({"phantom_bed": {"provinces": {"44": {"quantile": 0.9}}}},
                               discover())
    assert len(problems) == 1 and "per-province values are not supported" in problems[0]
    with pytest.raises(RuleConfigError):
        PhantomBed(quantile=1.5)


# ----------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def stream():
    """A small simulated province: only the persons with an inpatient stay, so the
    model has stays to learn from and the stream stays short."""
    sim = simulate(days=40, seed=3, scale=0.05)
    valid = []
    for raw in sim.events:
        try:
            record = parse(raw)
        except Rejected:
            continue
        if getattr(record, "person_id", None):
            valid.append((raw, record))
    patients = {r.person_id for _, r in valid if r.visit_type == "inpatient"}
    return [raw for raw, r in valid if r.person_id in patients]


def _scores(lines, partitions=2, state=None, complete=True, **params):
    params = {"warmup": 20, **params}
    rule = PhantomBed(**params)
    pipeline = OfflinePipeline(DetectionCore([rule], books=[], partitions=partitions))
    if state is not None:
        pipeline.state = state
    pipeline.feed_all(lines)
    if complete:
        pipeline.close_input()
    return pipeline


def test_same_input_and_seed_give_the_same_scores_and_another_seed_does_not(stream):
    first, again = _scores(stream), _scores(stream)
    assert len(first.scores) > 100
    assert orjson.dumps(first.scores) == orjson.dumps(again.scores)
    assert orjson.dumps(first.alerts) == orjson.dumps(again.alerts)
    assert any(s["scores"]["phantom_bed"] > 0 for s in first.scores)
    other = _scores(stream, seed=7)
    assert [s["settlement_id"] for s in other.scores] == \
        [s["settlement_id"] for s in first.scores]
    assert other.scores != first.scores


def test_arrival_order_within_the_lateness_does_not_change_a_score(stream):
    """Live, records of one person reach the detect stage through several admission
    partitions, in any interleaving: scoring at the day's close in event-time order
    makes that irrelevant. Here each record is moved by up to an hour."""
    rng = random.Random(11)
    jittered = sorted(stream, key=lambda raw: event_ms(parse(raw)) + rng.randint(0, 3_600_000))
    assert jittered != stream
    assert _scores(jittered).scores == _scores(stream).scores


def test_a_model_restored_from_its_table_state_goes_on_as_if_it_never_stopped(stream):
    """A worker killed half-way: its successor has only the table (JSON, as Faust
    keeps it) — the checkpoint and the journal since — and no model in memory."""
    whole = _scores(stream, checkpoint_every=7)
    half = len(stream) // 2
    state = JsonTable()
    stopped = _scores(stream[:half], state=state, complete=False, checkpoint_every=7)
    shared = [v["v"] for k, v in state.items() if "|~" in k]
    assert len(shared) == 2 and all(v["ckpt"] for v in shared)  # both partitions
    assert any(v["journal"] for v in shared)  # and stays scored since a checkpoint
    # A new rule instance (a new process) over the same table, then the rest.
    rule = PhantomBed(warmup=20, checkpoint_every=7)
    resumed = OfflinePipeline(DetectionCore([rule], books=[], partitions=2), state=state)
    # What the restarted worker's other tables and the broker give it back: the
    # ledger, the event-time progress, the positions it goes on from.
    resumed.ledger, resumed.newest_ms, resumed.closed_ms, resumed._position = (
        stopped.ledger, stopped.newest_ms, stopped.closed_ms, stopped._position)
    resumed.feed_all(stream[half:])
    resumed.close_input()
    assert stopped.scores + resumed.scores == whole.scores


def test_checkpoint_restore_of_the_model_alone():
    rng = random.Random(5)
    xs = [dict({name: rng.random() for name in FEATURES}, length_of_stay=rng.randint(1, 30),
               cost_per_day=rng.uniform(200, 2000)) for _ in range(400)]
    for kind in ("hst", "svm", "loda"):
        never_stopped = StayModel(kind, seed=3, warmup=50)
        for x in xs[:250]:
            never_stopped.score_and_learn(x)
        restored = restore(never_stopped.checkpoint())
        assert [never_stopped.score_and_learn(x) for x in xs[250:]] == \
            [restored.score_and_learn(x) for x in xs[250:]], kind


# ----------------------------------------------------------------------- live = replay

@pytest.mark.broker
def test_live_worker_and_replay_give_the_same_scores(broker, tmp_path, stream):
    """Two partitions end to end: a person's records cross both admission partitions,
    and each detect partition keeps its own model; the replay emulates both."""
    from infra.broker import ensure_topics
    from infra.config import Settings
    from streams.live import start_worker, stop_worker
    from tests.live_support import run_through_worker

    config = tmp_path / "fundwatch.toml"
    config.write_text("[rules.phantom_bed]\nwarmup = 20\ncheckpoint_every = 50\n")
    tag = uuid.uuid4().hex[:8]
    settings = Settings.load(env={"FUNDWATCH_CONFIG": str(config)}).with_(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"pb{tag}.",
        app_id=f"phantom-{tag}", partitions=2, data_dir=str(tmp_path / "data"),
        db_url=f"sqlite:///{tmp_path / 'alerts.db'}")
    ensure_topics(broker.bootstrap_servers, settings)
    offline = OfflinePipeline(DetectionCore(load_rules(settings.rules), partitions=2))
    offline.feed_all(stream)  # no close_input: a live worker never knows the input ended
    newest = max(event_ms(parse(raw)) for raw in stream)
    midnight = last_midnight(newest - DEFAULT_LATENESS_S * 1000)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        observed = asyncio.run(run_through_worker(settings, worker, stream, len(stream),
                                                  timeout_s=120, closed_through=midnight))
    finally:
        stop_worker(worker)
    replayed = {s["settlement_id"]: s for s in offline.scores}  # score, place, partition
    assert len(replayed) > 100
    assert observed.scores == replayed
    mine = {k: a for k, a in offline.alerts.items() if a["rule_id"] == "phantom_bed"}
    assert mine
    assert {k: a for k, a in observed.alerts.items() if a["rule_id"] == "phantom_bed"} == mine
