"""The bench's view of a consumer group (streams.live.Observed), from the metrics the
workers publish: no broker needed. The bench itself (`fundwatch bench`) is a
benchmark, not a test: its figures are in the README."""
from __future__ import annotations

import time

from streams.live import Observed


def test_the_detect_stage_balances_over_the_workers_not_per_worker():
    o = Observed()
    now = time.monotonic()
    # Worker a's admission routed copies to partitions b's detect stage holds.
    o.flow["a"] = ({"routed": 700, "instance": "A", "detected_from": {"A": 400, "B": 1}}, now)
    o.flow["b"] = ({"routed": 300, "instance": "B", "detected_from": {"A": 299, "B": 299}},
                   now)
    assert not o.detect_caught_up
    o.flow["b"] = ({"routed": 300, "instance": "B", "detected_from": {"A": 300, "B": 299}},
                   now)
    assert o.detect_caught_up
    o.flow["gone"] = ({"routed": 50, "instance": "G", "detected_from": {}}, now - 60)
    assert o.detect_caught_up  # a stopped worker's copies are not waited for


def test_a_restarted_worker_is_caught_up_although_it_handled_its_predecessors_copies():
    # Killed before committing, worker "old" left copies it had routed (and handled)
    # to be handled again by its successor, which never routed them itself.
    o = Observed()
    now = time.monotonic()
    o.flow["old"] = ({"routed": 900, "instance": "O", "detected_from": {"O": 900}}, now - 60)
    o.flow["new"] = ({"routed": 500, "instance": "N", "detected_from": {"O": 40, "N": 499}},
                     now)
    assert not o.detect_caught_up
    o.flow["new"] = ({"routed": 500, "instance": "N", "detected_from": {"O": 40, "N": 500}},
                     now)
    assert o.detect_caught_up


def test_shares_count_each_recent_workers_source_partitions():
    o = Observed()
    now = time.monotonic()
    o.flow["a"] = ({"routed": 0, "instance": "x", "detected_from": {}}, now)
    o.flow["b"] = ({"routed": 0, "instance": "x", "detected_from": {}}, now)
    o.sources["a"] = ["s/0", "s/1", "c/0"]
    assert o.shares() == [3, 0]          # b has reported but reads nothing yet
    o.sources["b"] = ["s/2", "s/3", "c/1", "c/2", "c/3"]
    assert sorted(o.shares()) == [3, 5]
    o.flow["a"] = ({"routed": 0, "instance": "x", "detected_from": {}}, now - 60)
    assert o.shares() == [5]
