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
        # The writer itself, which keeps values in pieces decoded (the old one read,
        # the new one as it was written), reads what its store holds, as a fresh
        # reader does.
        writer = EncodedValues(dict(held), piece_bytes=200)
        writer.get(key)
        apply_entries(writer.store, writer.entries(key, new)[:cut])
        assert writer.get(key) == value
        readings.add("new" if value == new else "old")
        cut_short[key] = new  # the re-run writes the new value again
        assert cut_short.get(key) == new
        strays = set(cut_short.stray_pieces())
        assert not strays or (written_at < cut < len(entries) and strays <= old_pieces)
    assert readings == ({"new"} if old == new else {"old", "new"})


def _pieces_of(values, key: str) -> list[str]:
    return sorted(k for k in values.store if k.startswith("~piece/") and k.endswith(key))


def test_a_value_in_pieces_is_kept_decoded_while_the_table_holds_its_manifest():
    """A chain's state is read by every batch with a sale of the chain: it is kept
    decoded, not decoded again, as long as the table holds the manifest it was
    read or written under — whoever writes the key next."""
    from streams.changelog import EncodedValues

    key = "pharmacy_chain_anomaly|PCH001"
    values = EncodedValues({}, piece_bytes=200)
    first = _chain_state(40)
    values[key] = first
    assert len(_pieces_of(values, key)) > 1
    assert values.get(key) is first and values[key] is first  # as written
    reader = EncodedValues(values.store, piece_bytes=200)
    read = reader.get(key)
    assert read == first and read is not first and reader.get(key) is read
    # Another worker (after a rebalance) writes the key over the same table.
    reader[key] = second = _chain_state(41)
    assert values.get(key) == second and values.get(key) is not first
    # Written whole again: nothing kept answers for it.
    values[key] = small = _chain_state(2)
    assert reader.get(key) == small and values.get(key) == small


def test_a_lost_write_redone_by_another_worker_is_not_mistaken_for_the_kept_value():
    """Generation 1 written by this worker and lost (an acknowledged write lost with
    its leader), then generation 1 written by another worker with a value of the
    same length: the manifests differ only by the value's CRC-32, which is what
    tells this worker that the value it kept is not the one the table holds."""
    from streams.changelog import EncodedValues, apply_entries

    key = "pharmacy_chain_anomaly|PCH001"
    mine, theirs = _chain_state(40), _chain_state(40)
    theirs["v"]["det"]["S7"] = ["P440300001", "P7", 6408]  # same length, other value
    values = EncodedValues({}, piece_bytes=200)
    values[key] = mine
    other = EncodedValues({}, piece_bytes=200)
    other[key] = theirs
    assert len(values.store[key]) == len(other.store[key])
    assert values.store[key] != other.store[key]
    apply_entries(values.store, other.store.items())  # the changelog as recovered
    assert values.get(key) == theirs


def test_pieces_that_are_not_the_value_their_manifest_names_are_refused():
    from streams.changelog import EncodedValues, StateCorrupt

    key = "pharmacy_chain_anomaly|PCH001"
    values = EncodedValues({}, piece_bytes=200)
    values[key] = _chain_state(40)
    piece = _pieces_of(values, key)[1]
    values.store[piece] = values.store[piece].replace(b"64", b"65", 1)  # same length
    with pytest.raises(StateCorrupt, match="CRC-32"):
        EncodedValues(values.store, piece_bytes=200).get(key)


def test_values_kept_decoded_stay_within_their_budget():
    from streams.changelog import EncodedValues, encode_value

    one = len(encode_value(_chain_state(40)))
    values = EncodedValues({}, piece_bytes=200, keep_bytes=2 * one + 10)
    states = {f"pharmacy_chain_anomaly|PCH00{n}": _chain_state(40) for n in range(3)}
    for key, state in states.items():
        values[key] = state
    # The least recently used went first (read last here: a read keeps what it decodes).
    kept = [key for key, state in reversed(states.items()) if values.get(key) is state]
    assert kept == list(states)[:0:-1] and values._kept_bytes <= values.keep_bytes
    again = values.get("pharmacy_chain_anomaly|PCH000")
    assert again == states["pharmacy_chain_anomaly|PCH000"]
    assert values.get("pharmacy_chain_anomaly|PCH000") is again
