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
    o.flow["a"] = ({"routed": 700, "detected": 400}, now)
    o.flow["b"] = ({"routed": 300, "detected": 599}, now)
    assert not o.detect_caught_up
    o.flow["b"] = ({"routed": 300, "detected": 600}, now)
    assert o.detect_caught_up
    o.flow["gone"] = ({"routed": 50, "detected": 0}, now - 60)  # a stopped worker: history
    assert o.detect_caught_up


def test_shares_count_each_recent_workers_source_partitions():
    o = Observed()
    now = time.monotonic()
    o.flow["a"] = ({"routed": 0, "detected": 0}, now)
    o.flow["b"] = ({"routed": 0, "detected": 0}, now)
    o.sources["a"] = ["s/0", "s/1", "c/0"]
    assert o.shares() == [3, 0]          # b has reported but reads nothing yet
    o.sources["b"] = ["s/2", "s/3", "c/1", "c/2", "c/3"]
    assert sorted(o.shares()) == [3, 5]
    o.flow["a"] = ({"routed": 0, "detected": 0}, now - 60)
    assert o.shares() == [5]
