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
