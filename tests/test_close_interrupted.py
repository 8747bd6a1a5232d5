"""A worker killed part-way through writing a close's states, then restarted.

The live worker writes a close's new states one slot at a time to a changelog-backed
table; a SIGKILL between two writes leaves a *prefix* of them in the changelog (one
partition, written in order), and the restarted worker runs that close again.
``DetectionCore.commit`` promises that every such prefix is a state the close can be
re-run from. This test holds every rule and book to it on a simulated province: at
every close, only a prefix of the writes (a different length each time) is kept, the
rules are built afresh (a new process: no model in memory), the close runs again and
its writes are kept whole. The alerts, the scores and the final state must be those
of the run that was never interrupted.
"""
from __future__ import annotations

import random

from detectors.features import as_dict
from detectors.model import restore
from rules.core import ClosingIndex, DetectionCore, load_rules
from rules.registry import Registry
from streams.offline import OfflinePipeline
from streams.simulate import simulate, write

CONFIG = {"phantom_bed": {"warmup": 20, "checkpoint_every": 40}}


class KilledAtEveryClose(OfflinePipeline):
    """The offline driver with each close cut short after a prefix of its writes."""

    def __init__(self, make_core, seed: int) -> None:
        super().__init__(make_core())
        self.make_core = make_core
        self.rng = random.Random(seed)
        self.cut = 0  # closes that lost at least one write

    def _close_at(self, midnight) -> None:
        if not self.core.has_timers:
            return
        if self.closed_ms is not None and int(midnight.timestamp() * 1000) <= self.closed_ms:
            return
        detection = self.core.close(list(self.state), self.state, midnight)
        writes = list(detection.updates.items())
        keep = self.rng.randrange(len(writes) + 1)
        for slot, value in writes[:keep]:
            self.state[slot] = value
        self.cut += keep < len(writes)
        # Alerts are acknowledged before any state is written: they are out.
        for alert in detection.alerts:
            self.emitted.append(alert)
            self.alerts[alert["alert_id"]] = alert
        self.scores.extend(detection.scores)
        # Restarted: rules built anew, their closing index rebuilt from the state; the
        # clock (another table) was not saved.
        self.core = self.make_core()
        self.closing = ClosingIndex(self.core)
        super()._close_at(midnight)


def test_a_close_cut_short_at_any_write_and_run_again_changes_nothing(tmp_path):
    sim = simulate(days=100, seed=3, scale=0.02)
    paths = write(sim, tmp_path / "province.jsonl")
    registry = Registry.load(paths["pools"])

    def make_core() -> DetectionCore:
        return DetectionCore(load_rules(CONFIG, registry=registry), partitions=3)

    whole = OfflinePipeline(make_core()).feed_all(sim.events)
    whole.close_input()
    killed = KilledAtEveryClose(make_core, seed=11).feed_all(sim.events)
    killed.close_input()

    assert killed.cut > 30  # most closes lost some of their writes
    rules = {a["rule_id"] for a in whole.alerts.values()}
    assert {"phantom_bed", "pool_balance_low", "pool_deficit", "overlapping_stay",
            "cross_province_surge"} <= rules, rules
    assert killed.alerts == whole.alerts
    # A close re-run from nothing saved sends its scores again: the same ones (a
    # stay learned twice would shift every later score of its partition).
    again = {}
    for score in killed.scores:
        assert again.setdefault(score["settlement_id"], score) == score
    assert len(again) < len(killed.scores)
    assert again == {s["settlement_id"]: s for s in whole.scores}
    # A checkpoint pickled by a restored model is not byte for byte the one the
    # model that never stopped pickles: compare what the checkpoints do instead.
    checkpoints = {}
    for slot in whole.state:
        shared = whole.state[slot]["v"]
        if slot.startswith("phantom_bed|~") and shared.get("ckpt"):
            checkpoints[slot] = (restore(shared["ckpt"]),
                                 restore(killed.state[slot]["v"]["ckpt"]))
    assert checkpoints
    probe = [as_dict(v) for v in whole.state[next(iter(checkpoints))]["v"]["journal"]]
    for mine, theirs in checkpoints.values():
        assert [mine.score_and_learn(x) for x in probe] == \
            [theirs.score_and_learn(x) for x in probe]
    assert _without_checkpoints(killed.state) == _without_checkpoints(whole.state)


def _without_checkpoints(state: dict) -> dict:
    return {slot: ({**value, "v": {**value["v"], "ckpt": bool(value["v"].get("ckpt"))}}
                   if slot.startswith("phantom_bed|~") else value)
            for slot, value in state.items()}
