"""The batched changelog writer encodes table entries exactly as Faust's own table
writes do, so a table recovers the same state from either (the killed-worker tests
in test_live_pipeline.py and test_pool_live.py recover through the real broker)."""
from __future__ import annotations

import faust
import pytest

from streams.changelog import encode_entry

VALUES = [
    {"v": {"n": 3, "days": {"2025-03-01": [1, 2]}}, "at": {"0": 1_000_007}},
    {"v": {"cells": "eJzLSM3JyQcABiwCFQ==", "open": ["2025-06"]}, "at": {}},
    {"v": {"pair": (1, "a"), 7: "int key", "neg": -5, "f": 0.1}, "at": {"3": 0}},
    {"d": "ab" * 32, "s": "fundwatch.settlements/2/118", "ap": [1, 42_000]},
    None,
]


@pytest.mark.parametrize("value", VALUES)
def test_entries_are_encoded_as_faust_encodes_them(value, tmp_path):
    app = faust.App("changelog-codec", broker="memory://", store="memory://",
                    datadir=str(tmp_path))
    table = app.Table("rule-state", default=None)
    topic = table.changelog_topic
    key = "pharmacy_chain_anomaly|C001"
    faust_key, _ = topic.prepare_key(key, table.key_serializer)
    faust_value, _ = topic.prepare_value(value, table.value_serializer)
    assert encode_entry(key, value) == (faust_key, faust_value)
    # and Faust decodes them back to the same key and (JSON) value
    assert app.serializers.loads_key(None, faust_key, serializer=table.key_serializer) == key


def _chain_state(sales: int) -> dict:
    return {"v": {"chain": "PCH001", "det": {f"S{n}": ["P440300001", f"P{n}", 6400 + n]
                                             for n in range(sales)}}, "at": {"0": sales}}


@pytest.mark.parametrize("before, after", [(None, 40), (40, 90), (90, 3), (3, 3), (90, None)],
                         ids=["new", "grown", "shrunk-to-whole", "whole", "deleted"])
def test_a_write_cut_short_anywhere_leaves_the_old_value_or_the_new(before, after):
    """A worker killed part-way through a record batch leaves a prefix of its
    writes in the changelog (the batches are appended in order), and recovery
    rebuilds the table from that prefix. Whatever the prefix, the value read must be
    the old one or the new one, never a mix or an error; and writing the new value
    again over what the cut left (the re-run) must leave no piece behind but those
    its manifest names — except when the cut fell between the new value and the
    tombstones of its old pieces: those old pieces stay, only taking room."""
    from streams.changelog import EncodedValues, apply_entries

    key = "pharmacy_chain_anomaly|PCH001"
    old = None if before is None else _chain_state(before)
    new = None if after is None else _chain_state(after)
    values = EncodedValues({}, piece_bytes=200)
    if old is not None:
        values[key] = old
    held = dict(values.store)
    entries = values.entries(key, new)
    assert len(entries) > (1 if after and after > 3 else 0)
    written_at = [k for k, _ in entries].index(key)
    old_pieces = {k for k in held if k != key}
    readings = set()
    for cut in range(len(entries) + 1):
        store = dict(held)
        apply_entries(store, entries[:cut])
        cut_short = EncodedValues(store, piece_bytes=200)
        value = cut_short.get(key)
        assert value in (old, new), f"cut after {cut} of {len(entries)} writes"
        readings.add("new" if value == new else "old")
        cut_short[key] = new  # the re-run writes the new value again
        assert cut_short.get(key) == new
        strays = set(cut_short.stray_pieces())
        assert not strays or (written_at < cut < len(entries) and strays <= old_pieces)
    assert readings == ({"new"} if old == new else {"old", "new"})
