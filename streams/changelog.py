"""Table writes sent to their changelog as one record batch per partition.

Faust turns every table assignment into its own changelog message: a future, a
trip through its producer buffer, aiokafka's per-message append, an
acknowledgement callback and sensors, each. The admission stage writes a ledger
entry per record and the detect stage a few rule-state slots per record, so that
per-message path was the largest single share of a live worker's time (py-spy,
41,200 records: producer buffer, sender and table-set frames ~20% of the main
thread). :class:`ChangelogWriter` writes a stage's changes for one input batch at
once: each value goes into the table's in-memory store as a Faust assignment would
put it, and all of them, encoded as Faust's JSON codec encodes them, go into one
Kafka record batch per changelog partition. Recovery reads them like any other
changelog record.

Durability is unchanged: Faust flushes its producer (aiokafka's accumulator, which
holds these batches too) before it commits an input offset, so a batch's state is
on the broker before its input is marked done. A record batch is appended whole,
so a crash leaves either all of a batch's writes or none (beyond the first record
batch, when one input batch's changes exceed ``producer_max_batch_size``, the
order of the writes still holds: see ``DetectionCore.commit``). A write the broker
refuses stops the worker (``on_failure``, called back before a flush waiting on
that batch resumes) before any later commit could mark its input done.

The tables' values stay encoded in memory (:class:`EncodedValues`): the JSON bytes
the changelog holds, decoded when read. A rule's state as Python dicts took about
four times its JSON size (a person's phantom-bed state: ~170 bytes of JSON, ~1 KB
of objects), and a province's persons and ledger are most of a worker's memory
(``bench/state_memory.py``). The tables are declared ``value_type=bytes``, so
recovery hands back the same bytes, and the changelog's contents are unchanged:
readers of the topic (``fundwatch pools``, the inbox) decode the JSON as before.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson

#: As Faust's JSON codec (faust.utils.json.dumps): the bytes recovery decodes.
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def encode_value(value: Any) -> bytes:
    """A table value as Faust's JSON codec writes it, in a bytes object of its own
    size: orjson (3.x) hands back its whole working buffer, 4 KB and more, whatever
    the length — held for every key of a table, that was most of a worker's memory
    (measured: 4,000 bytes allocated for a 143-byte ledger entry).

    >>> encode_value({"v": {"n": 1}, "at": {"0": 7}})
    b'{"v":{"n":1},"at":{"0":7}}'
    """
    return bytes(memoryview(orjson.dumps(value, option=_OPTIONS)))


def encode_entry(key: str, value: Any) -> tuple[bytes, bytes]:
    """A table entry as Faust writes it to a changelog (JSON key, JSON value).

    >>> encode_entry("pool_fund|440300:employee", {"v": {"n": 1}, "at": {"0": 7}})
    (b'"pool_fund|440300:employee"', b'{"v":{"n":1},"at":{"0":7}}')
    """
    return orjson.dumps(key), encode_value(value)


class EncodedValues(MutableMapping):
    """A mapping whose values are kept as their JSON bytes (a Faust table declared
    ``value_type=bytes``, or a dict), decoded on every read: the rules and the
    admission see plain values, the table holds what its changelog holds.

    >>> values = EncodedValues({})
    >>> values["s:S1"] = {"d": "ab12", "ap": [0, 7]}
    >>> values.store["s:S1"], values["s:S1"]["ap"], values.get("s:S2")
    (b'{"d":"ab12","ap":[0,7]}', [0, 7], None)
    """

    def __init__(self, store: MutableMapping[str, bytes]) -> None:
        self.store = store

    def __getitem__(self, key: str) -> Any:
        raw = self.store[key]
        if raw is None:  # a Faust table's default for a missing key
            raise KeyError(key)
        return orjson.loads(raw)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.store.get(key)
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self.store[key] = encode_value(value)

    def __delitem__(self, key: str) -> None:
        del self.store[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


class ChangelogWriter:
    """Writes to one Faust table of encoded values (``value_type=bytes``), sent as
    record batches (see the module doc).

    ``producer`` returns the started aiokafka producer (Faust's own, so that its
    commit-time flush covers these batches); ``on_failure(topic, exc)`` is called
    if the broker refuses a batch.
    """

    def __init__(self, table, producer: Callable[[], Any],
                 on_failure: Callable[[str, BaseException], None]) -> None:
        self.table = table
        self.producer = producer
        self.on_failure = on_failure
        self.batches = 0
        self.records = 0

    async def write(self, partition: int, changes: Mapping[str, Any]) -> None:
        """Set every key of ``changes`` in the table (encoded), in order, and append them to
        changelog partition ``partition`` (the partition of the input being
        handled, as Faust's own table writes use). A value None deletes its key."""
        if not changes:
            return
        producer = self.producer()
        topic = self.table.changelog_topic.get_topic_name()
        store = self.table.data
        batch = producer.create_batch()
        for key, value in changes.items():
            if value is None:  # deleted: a tombstone, which recovery applies as one
                encoded_key, encoded_value = orjson.dumps(key), None
            else:
                encoded_key, encoded_value = encode_entry(key, value)
            if batch.append(key=encoded_key, value=encoded_value, timestamp=None) is None:
                await self._send(producer, batch, topic, partition)
                batch = producer.create_batch()
                # An empty batch takes any one record, whatever its size.
                batch.append(key=encoded_key, value=encoded_value, timestamp=None)
            if encoded_value is None:
                with contextlib.suppress(KeyError):
                    del store[key]
            else:
                store[key] = encoded_value
            self.records += 1
        await self._send(producer, batch, topic, partition)

    async def _send(self, producer, batch, topic: str, partition: int) -> None:
        batch.close()
        sent = await producer.send_batch(batch, topic, partition=partition)
        self.batches += 1
        sent.add_done_callback(lambda sent: self._check(topic, sent))

    def _check(self, topic: str, sent) -> None:
        if sent.cancelled():
            return
        exc = sent.exception()
        if exc is not None:
            self.on_failure(topic, exc)


class StateOverlay(MutableMapping):
    """A stage's writes for one input batch, kept over a table (``changed``, in
    order) until the stage writes them together (``ChangelogWriter.write``); reads
    see them first. What it reads from the table is kept too: a value is decoded
    once per batch, not once per record (a chain's or a province's state, tens of
    kilobytes, is read by every record of it). Values are replaced, never mutated,
    so a value read stays what the table holds until it is written.

    >>> table = EncodedValues({"a": b'{"n":1}'})
    >>> overlay = StateOverlay(table)
    >>> overlay["b"] = {"n": 2}
    >>> overlay.get("a"), overlay["b"], overlay.get("c", "none"), sorted(overlay)
    ({'n': 1}, {'n': 2}, 'none', ['a', 'b'])
    >>> list(overlay.changed), table.store["a"]
    (['b'], b'{"n":1}')
    >>> del overlay["a"]                     # a tombstone once written
    >>> overlay.get("a"), sorted(overlay), overlay.changed["a"]
    (None, ['b'], None)
    """

    def __init__(self, table: MutableMapping) -> None:
        self.table = table
        self.changed: dict = {}
        self._read: dict = {}

    def _lookup(self, key):
        if key in self.changed:
            return self.changed[key]
        if key not in self._read:
            self._read[key] = self.table.get(key)
        return self._read[key]

    def __getitem__(self, key):
        value = self._lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        value = self._lookup(key)
        return default if value is None else value

    def __setitem__(self, key, value) -> None:
        self.changed[key] = value

    def __delitem__(self, key) -> None:
        if self._lookup(key) is None:
            raise KeyError(key)
        self.changed[key] = None  # written as a tombstone (ChangelogWriter.write)

    def __iter__(self):
        for key in list(self.table.keys()):
            if key not in self.changed:
                yield key
        for key, value in self.changed.items():
            if value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)
