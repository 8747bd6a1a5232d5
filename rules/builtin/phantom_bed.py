"""phantom_bed — inpatient stays an online model finds unusual (挂床住院).

A phantom stay is billed as if the patient were in the bed while they are not.
No fixed rule catches all of it: some are long stays of bed-days and nursing with
little care, some are kept in bed to have chronic drugs paid as inpatient care,
some look ordinary on paper while the patient is seen at a clinic or a pharmacy
elsewhere. So every inpatient settlement is scored by an online River model
(``detectors.model``) on its features (``detectors.features``: length of stay,
cost per day, shares of bed, drug, exam, treatment and nursing, hospital level and
beds, age, weekday of admission, cross-region care, and the person's settlements at
other institutions during the stay), and the stays it finds most unusual are sent
to the treatment side's supervision center with the score and the features that
stood out. The deterministic companions (``overlapping_stay``, ``split_admission``)
prove what can be proven outright; this rule ranks what cannot.

How it is decided (event time):

* State per person (key ``person``): their settlements of the last ``history_days``
  (compact entries) and their inpatient settlements not yet scored. ``apply`` only
  records.
* When a day is complete (the ``close`` timer, driven by the watermark), each detect
  partition's model scores the stays settled before that midnight, oldest first
  (settlement time, then id), each one *before* learning it, with the person's
  history strictly before the settlement. The order depends on event time only, so a
  live worker (which may close several days at once, with records of different
  admission partitions interleaved) and a replay score the same stays in the same
  order and give the same scores.
* The model is one per detect partition (``rules.core.partition_of`` of the person,
  with the configured partition count), seeded (``seed``). It may alert only after
  ``warmup`` scored stays; then a stay alerts when its score is above the running
  ``quantile`` of the partition's scores so far — or above ``threshold`` when that
  is set (> 0). **Critical** when the person was also billed elsewhere during the
  stay (a fact an inspector can check at once), **warning** otherwise.
* **Model state**: the partition's shared state holds a checkpoint of the model
  (pickle, zlib, base64) taken every ``checkpoint_every`` scored stays and the
  feature vectors scored since (the journal). A restarted worker restores the
  checkpoint and replays the journal: it resumes warm, exactly where the stopped one
  was. The state is written with each close, after its alerts are acknowledged, and
  before the persons' states; it names the stays that close scored, so a close run
  again after a worker was killed between those writes does not learn them twice.
* **Alert identity**: subject the settlement, window from admission (00:00) to the
  settlement; so a replay gives the same ``alert_id``.
* **Reversals** (冲正) are decided by event time, never by when they arrived: a stay
  reversed on its own settlement day is not scored; one reversed later is scored
  (whether its reversal came before or after the day closed differs between a live
  worker and a replay, so it must not matter); a visit elsewhere counts for a stay
  unless it was reversed before the stay's settlement.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> item = lambda c, yuan: E(category=c, amount_fen=yuan * 100, quantity=None)
>>> def stay(n, los, bed, exam, day):
...     return E(kind="settlement", settlement_id=f"S{n}", person_id=f"P{n}",
...              visit_type="inpatient", institution_id="H1", institution_level=2,
...              treatment_region="440900", insured_region="440900", age=60,
...              admitted_on=date(2025, 3, day), discharged_on=date(2025, 3, day + los),
...              settled_at=datetime.fromisoformat(f"2025-03-{day + los:02d}T10:00:00+08:00"),
...              total_cost_fen=(bed + exam + 3000) * 100, reverses=None,
...              items=(item("bed", bed), item("exam", exam), item("drug", 3000)))
>>> rule = PhantomBed(warmup=200, quantile=0.99)
>>> states = {}
>>> for n in range(300):   # 4-9 days, bed 1,200-1,899 yuan, exams 2,200-3,099
...     e = stay(n, 4 + n * 7 % 6, 1200 + n * 37 % 700, 2200 + n * 53 % 900, 1 + n % 10)
...     states[e.person_id], _ = rule.apply(None, e)
>>> odd = stay(999, 10, 9000, 100, 20)   # mostly bed, hardly an exam
>>> states["P999"], _ = rule.apply(None, odd)
>>> midnight = datetime.fromisoformat("2025-04-01T00:00:00+08:00")
>>> changed, shared, alerts, scores = rule.close_shared(0, states, None, midnight)
>>> len(scores), shared["n"], [a["subject"]["id"] for a in alerts]
(301, 301, ['S999'])
>>> sorted(alerts[0]["evidence"]["standouts"])
['bed_share', 'drug_share', 'exam_share', 'length_of_stay']
>>> rule.close_shared(0, {**states, **changed}, shared, midnight)[2:]   # idempotent
([], [])
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from detectors.features import (
    as_dict,
    elsewhere_during,
    event_ms,
    history_entry,
    reversed_before,
    stay_features,
    vector,
    with_history,
)
from detectors.model import MODELS, StayModel, restore
from rules.alerts import SHANGHAI, make_alert
from rules.core import Param, Rule, RuleConfigError

DAY_MS = 86_400_000


def _next_midnight(ms: int) -> int:
    """The first midnight (Asia/Shanghai, UTC+8 all year) after ``ms``."""
    return (ms + 8 * 3_600_000) // DAY_MS * DAY_MS + DAY_MS - 8 * 3_600_000


class PhantomBed(Rule):
    rule_id = "phantom_bed"
    description = ("inpatient stays an online model (River) scores as most unusual: "
                   "phantom bed occupancy (挂床住院)")
    subject_kind = "settlement"
    key_kind = "person"
    shared = True
    params = {
        "model": Param(str, "hst", "the River pipeline: hst (HalfSpaceTrees behind a "
                                   "MinMaxScaler), svm (OneClassSVM), loda, lof"),
        "seed": Param(int, 42, "seed of the model (same input, same seed: same scores)",
                      minimum=0),
        "warmup": Param(int, 100, "stays a partition's model scores before it may alert",
                        minimum=0),
        "quantile": Param(float, 0.98, "alert above this running quantile of the "
                                       "partition's scores", minimum=0.0, maximum=1.0),
        "threshold": Param(float, 0.0, "a fixed score threshold instead of the quantile "
                                       "(0: use the quantile)", minimum=0.0),
        # At most 5,000: the journal (~100 bytes a stay) and the checkpoint (~50 KB)
        # travel in one changelog message, which Kafka caps at 1 MiB by default.
        "checkpoint_every": Param(int, 1000, "stays scored between two full checkpoints "
                                             "of a model (the journal holds the rest)",
                                  minimum=1, maximum=5000),
        "context": Param(bool, False, "feed the hospital's level and beds, the age and "
                                      "cross-region care to the model too (they are in "
                                      "the alert either way)"),
        "history_days": Param(int, 90, "days of a person's settlements kept to see "
                                       "where they were during a stay", minimum=1,
                              maximum=366),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.p["model"] not in MODELS:
            raise RuleConfigError(f"rules.phantom_bed.model: {self.p['model']!r} is not one "
                                  f"of {', '.join(MODELS)}")
        if self._by_province:
            # One model per partition scores the stays of every province it gets: a
            # province's own threshold or model would have to be a model of its own.
            raise RuleConfigError("rules.phantom_bed.provinces: per-province values are not "
                                  "supported (one model per partition serves every province)")
        # Models in memory, per partition: {shard: StayModel}. The table holds their
        # checkpoints; a model is used only while its count matches the table's.
        self._models: dict[int, StayModel] = {}

    def wants(self, event: Any) -> bool:
        return getattr(event, "kind", None) == "settlement"

    def due(self, state) -> bool:
        return bool(state and state["due"])  # a person with a stay not yet scored

    def apply(self, state, event):
        state = state or {"h": [], "due": []}
        history, due = state["h"], state["due"]
        history = history + [history_entry(event)]
        if not event.reverses:
            if event.visit_type == "inpatient" and event.admitted_on and event.discharged_on:
                institution = self.registry.institution(event.institution_id) \
                    if self.registry is not None else None
                due = due + [{
                    "sid": event.settlement_id, "ms": event_ms(event),
                    "inst": event.institution_id, "adm": event.admitted_on.isoformat(),
                    "dis": event.discharged_on.isoformat(),
                    "regions": [event.treatment_region, event.insured_region],
                    "f": vector(stay_features(event, institution))}]
        # Kept: what a stay not yet scored, or one settled now, can still look back on.
        newest = max((h[0] for h in history), default=0)
        oldest_due = min((d["ms"] for d in due), default=newest)
        since = min(newest, oldest_due) - self.p["history_days"] * DAY_MS
        history = sorted((h for h in history if h[0] >= since), key=lambda h: (h[0], h[1]))
        return {"h": history, "due": due}, []

    # ------------------------------------------------------------------ the model
    def _model(self, shard: int, shared: dict | None) -> StayModel:
        model = self._models.get(shard)
        n = shared["n"] if shared else 0
        if model is not None and model.n == n:
            return model
        if shared is None:
            model = self._new_model()
        else:  # a restart, or a partition handed over from another worker
            model = restore(shared["ckpt"]) if shared.get("ckpt") else self._new_model()
            for values in shared["journal"]:
                model.score_and_learn(as_dict(values))
        self._models[shard] = model
        return model

    def _new_model(self) -> StayModel:
        p = self.p
        return StayModel(p["model"], seed=p["seed"], warmup=p["warmup"],
                         quantile=p["quantile"], threshold=p["threshold"] or None,
                         context=p["context"])

    def close_shared(self, shard, states, shared, midnight):
        until = int(midnight.timestamp() * 1000)
        ready = sorted(((d["ms"], d["sid"], key, d) for key, state in states.items()
                        for d in state["due"] if d["ms"] < until), key=lambda r: r[:2])
        done = {r[2] for r in ready}
        # A stay reversed on its own settlement day is not scored. A later reversal
        # may arrive before or after the stay's day is closed (the live watermark is
        # not the replay's): it must not decide, so the stay is scored either way.
        ready = [r for r in ready
                 if r[1] not in reversed_before(states[r[2]]["h"], _next_midnight(r[0]))]
        # Stays the last close scored whose persons' new state was lost (a worker
        # killed between the writes: the shared state is written first) are taken
        # off their persons' lists, not learned a second time.
        learned = set(shared.get("last", ())) if shared else set()
        ready = [r for r in ready if r[1] not in learned]
        changed = {key: {**states[key], "due": [d for d in states[key]["due"]
                                                if d["ms"] >= until]} for key in done}
        if not ready:
            return changed, shared, [], []
        model = self._model(shard, shared)
        journal = list(shared["journal"]) if shared else []
        ckpt = shared.get("ckpt") if shared else None
        alerts, scores = [], []
        for ms, sid, key, due in ready:
            seen = elsewhere_during(states[key]["h"], ms, due["inst"],
                                    date.fromisoformat(due["adm"]),
                                    date.fromisoformat(due["dis"]), sid)
            features = with_history(as_dict(due["f"]), seen)
            standouts = model.standouts(features)  # against what came before it
            decision = model.score_and_learn(features)
            journal.append(vector(features))
            if len(journal) >= self.p["checkpoint_every"]:
                ckpt, journal = model.checkpoint(), []
            # Where and after how many stays it was scored: what a live/replay
            # comparison needs to tell a different order from different features.
            scores.append({"settlement_id": sid,
                           "scores": {self.rule_id: round(decision.score, 6)},
                           "scored_before": {self.rule_id: model.n - 1},
                           "partition": shard})
            if decision.alarm:
                alerts.append(self._alert(key, due, features, standouts, decision,
                                          [entry[1] for entry in seen], model.n))
        new_shared = {"n": model.n, "ckpt": ckpt, "journal": journal,
                      "last": [r[1] for r in ready]}
        return changed, new_shared, alerts, scores

    def _alert(self, person, due, features, standouts, decision, elsewhere, n) -> dict:
        treatment, insured = due["regions"]
        regions = [treatment] if treatment == insured else [treatment, insured]
        settled = datetime.fromtimestamp(due["ms"] / 1000, tz=SHANGHAI).isoformat()
        severity = "critical" if elsewhere else "warning"
        days = int(features["length_of_stay"])
        summary = (f"inpatient stay {due['sid']} at {due['inst']} ({days} days, "
                   f"{due['adm']}..{due['dis']}) scores {decision.score:.2f} for phantom bed "
                   f"occupancy (threshold {decision.threshold:.2f})")
        if elsewhere:
            summary += f"; the person was billed at {len(elsewhere)} other institution(s) " \
                       f"during the stay"
        return make_alert(
            self.rule_id, severity, self.subject_kind, due["sid"], regions=regions,
            window={"start": f"{due['adm']}T00:00:00+08:00", "end": settled},
            detected_at=settled, summary=summary,
            review="joint" if len(regions) > 1 else "single",
            evidence={"score": round(decision.score, 6),
                      "threshold": round(decision.threshold, 6),
                      "model": self.p["model"], "scored_before": n - 1,
                      "person_id": person, "institution_id": due["inst"],
                      "features": features, "standouts": standouts,
                      "elsewhere_settlement_ids": elsewhere},
            settlement_ids=[due["sid"], *elsewhere])
