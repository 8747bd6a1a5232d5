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

A value is written whole as one changelog message only up to ``piece_bytes`` of
JSON (:data:`PIECE_BYTES`, ``FUNDWATCH_STATE_PIECE_BYTES``). A topic takes messages
up to its ``max.message.bytes`` (a broker's default: about 1 MB, and the changelogs
are made with the defaults), and a rule's state for one key grows with what the key
stands for: a pharmacy chain's 9 days of settlements (``bench/state_sizes.py``).
A write refused stops the worker, so one large chain would have stopped every
worker and every successor for good. A longer value is written in pieces, each a
message of its own under a key of its own (:func:`piece_key`), and its key holds a
small manifest naming them; a read joins them again (:class:`EncodedValues`).

Pieces are never overwritten in place, so a crash part-way through a write leaves
the value as it was: the new value's pieces go under a new *generation*, then the
manifest (the write itself), then tombstones for the previous generation's pieces.
A crash before the manifest leaves pieces no manifest names (the write is re-done
under the same generation, over them); one after it leaves the old pieces, which
only take room. Readers of the topic join the pieces as the worker does
(``streams.live.read_table``). A manifest carries the value's CRC-32: a read checks
the joined pieces against it.

The values in pieces are also the ones read by batch after batch (a large chain's
state, by every batch with a sale of the chain), so :class:`EncodedValues` keeps
them decoded, up to ``FUNDWATCH_STATE_KEPT_BYTES`` of JSON, as long as the table
holds the manifest they were read or written under.
"""
from __future__ import annotations

import contextlib
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson

#: As Faust's JSON codec (faust.utils.json.dumps): the bytes recovery decodes.
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z

#: The longest value written as one changelog message (JSON bytes). Half a broker's
#: default limit (1,048,588 bytes for a record batch): a piece and its key, alone in
#: their record batch, fit a topic left at Kafka's defaults.
PIECE_BYTES = 512 * 1024
#: Where the pieces of a longer value are kept: "~piece/<generation>.<index>/<key>".
#: No other key of the tables starts so (rule slots start with a rule's id, the
#: ledger's keys with "s:", "c:", "src:" or one of its own "~…/" prefixes), whatever
#: the ids in the records.
PIECE_PREFIX = "~piece/"
_MANIFEST = b'{"~pieces":'
#: How much of the values held in pieces (their JSON bytes) a table keeps decoded
#: between batches, the most recently used first. Such a value is a chain's or a
#: province's state, read by every batch that has a record of it: decoding it
#: again each time cost 158 ms a batch for a chain holding 9 days of 16,000 sales
#: (8.3 MB of JSON), three times what writing it costs (``python bench/hot_key.py
#: --sizes 16000 --days 9``).
KEEP_DECODED_BYTES = 32 * 1024 * 1024


class StateCorrupt(RuntimeError):
    """A value's manifest names a piece the table does not hold."""


def piece_key(key: str, generation: int, index: int) -> str:
    """The key of a piece of ``key``'s value.

    >>> piece_key("pharmacy_chain_anomaly|PCH001", 3, 0)
    '~piece/3.0/pharmacy_chain_anomaly|PCH001'
    >>> owner_of(_)
    'pharmacy_chain_anomaly|PCH001'
    """
    return f"{PIECE_PREFIX}{generation}.{index}/{key}"


def owner_of(key: str) -> str | None:
    """The key whose value a piece is part of; None for a key that is no piece."""
    if not key.startswith(PIECE_PREFIX):
        return None
    return key.split("/", 2)[2]


def _manifest(raw: bytes | None) -> dict | None:
    """The manifest a held value is, or None for a value held whole (or none)."""
    return orjson.loads(raw) if raw is not None and raw.startswith(_MANIFEST) else None


def _named(key: str, manifest: dict) -> list[str]:
    """The keys of the pieces ``manifest`` names, in order."""
    return [piece_key(key, manifest["generation"], n) for n in range(manifest["~pieces"])]


def joined(key: str, raw: bytes | None, lookup: Callable[[str], bytes | None]) -> bytes | None:
    """A value's JSON: ``raw`` itself, or the pieces its manifest names, joined (and
    checked against the manifest's CRC-32, which manifests before it lack)."""
    manifest = _manifest(raw)
    if manifest is None:
        return raw
    pieces = [lookup(piece) for piece in _named(key, manifest)]
    if any(piece is None for piece in pieces) or sum(map(len, pieces)) != manifest["bytes"]:
        raise StateCorrupt(f"{key!r}: the table does not hold the {manifest['~pieces']} "
                           f"pieces of generation {manifest['generation']} "
                           f"({manifest['bytes']} bytes) its manifest names")
    value = b"".join(pieces)
    if "crc" in manifest and zlib.crc32(value) != manifest["crc"]:
        raise StateCorrupt(f"{key!r}: the {manifest['~pieces']} pieces of generation "
                           f"{manifest['generation']} are not the value its manifest names "
                           "(CRC-32 differs)")
    return value


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
    admission see plain values, the table holds what its changelog holds. A value
    longer than ``piece_bytes`` is kept in pieces (see the module doc); None keeps
    every value whole.

    Values in pieces are the few large ones, read by batch after batch: up to
    ``keep_bytes`` of them (JSON) are also kept decoded, as last written or read,
    and handed out again while the table holds the same manifest. Values are
    replaced, never mutated (``rules.core``), so the object kept is the value; the
    manifest's generation and CRC-32 tell a value written since apart, by this
    worker or, over a rebalance, by another.

    >>> values = EncodedValues({})
    >>> values["s:S1"] = {"d": "ab12", "ap": [0, 7]}
    >>> values.store["s:S1"], values["s:S1"]["ap"], values.get("s:S2")
    (b'{"d":"ab12","ap":[0,7]}', [0, 7], None)

    In pieces:

    >>> values = EncodedValues({}, piece_bytes=16)
    >>> values["chain|PCH9"] = {"sold": list(range(10))}
    >>> sorted(values.store)
    ['chain|PCH9', '~piece/1.0/chain|PCH9', '~piece/1.1/chain|PCH9']
    >>> values.store["chain|PCH9"]
    b'{"~pieces":2,"generation":1,"bytes":30,"crc":3757706900}'
    >>> values["chain|PCH9"]["sold"][-1], list(values), len(values)
    (9, ['chain|PCH9'], 1)
    >>> values["chain|PCH9"] is values["chain|PCH9"]    # kept decoded
    True
    >>> [(key, value and len(value)) for key, value in
    ...  values.entries("chain|PCH9", {"sold": list(range(12))})]    # doctest: +NORMALIZE_WHITESPACE
    [('~piece/2.0/chain|PCH9', 16), ('~piece/2.1/chain|PCH9', 16), ('~piece/2.2/chain|PCH9', 4),
     ('chain|PCH9', 56), ('~piece/1.0/chain|PCH9', None), ('~piece/1.1/chain|PCH9', None)]
    >>> del values["chain|PCH9"]
    >>> values.store
    {}
    """

    def __init__(self, store: MutableMapping[str, bytes],
                 piece_bytes: int | None = PIECE_BYTES,
                 keep_bytes: int = KEEP_DECODED_BYTES) -> None:
        self.store = store
        self.piece_bytes = piece_bytes
        self.keep_bytes = keep_bytes
        # key → (its manifest, the value decoded, its JSON length), least recent first
        self._kept: OrderedDict[str, tuple[bytes, Any, int]] = OrderedDict()
        self._kept_bytes = 0

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:  # also a Faust table's default for a missing key
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        head = self.store.get(key)
        if head is None:
            return default
        kept = self._kept.get(key)
        if kept is not None and kept[0] == head:
            self._kept.move_to_end(key)
            return kept[1]
        raw = joined(key, head, self.store.get)
        value = orjson.loads(raw)
        if raw is not head:  # in pieces
            self._keep(key, head, value, len(raw))
        return value

    def _keep(self, key: str, manifest: bytes | None, value: Any, size: int) -> None:
        """Keep ``value`` decoded under its manifest (None: forget the key's)."""
        if (old := self._kept.pop(key, None)) is not None:
            self._kept_bytes -= old[2]
        if manifest is None or size > self.keep_bytes:
            return
        self._kept[key] = (manifest, value, size)
        self._kept_bytes += size
        while self._kept_bytes > self.keep_bytes:
            self._kept_bytes -= self._kept.popitem(last=False)[1][2]

    def entries(self, key: str, value: Any) -> list[tuple[str, bytes | None]]:
        """What writing ``value`` (None: deleting) under ``key`` puts in the store,
        in the order the changelog must take it (None: a tombstone)."""
        old = _manifest(self.store.get(key))
        out: list[tuple[str, bytes | None]] = []
        if value is None:
            self._keep(key, None, None, 0)
            out.append((key, None))
        else:
            encoded = encode_value(value)
            size = self.piece_bytes
            if size and len(encoded) > size:
                generation = old["generation"] + 1 if old else 1
                out += [(piece_key(key, generation, n), encoded[at:at + size])
                        for n, at in enumerate(range(0, len(encoded), size))]
                manifest = encode_value({"~pieces": len(out), "generation": generation,
                                         "bytes": len(encoded), "crc": zlib.crc32(encoded)})
                # Kept now: a read finds it once the store holds this manifest (a
                # write cut short leaves the old one, and the read decodes that).
                self._keep(key, manifest, value, len(encoded))
                encoded = manifest
            else:
                self._keep(key, None, None, 0)
            out.append((key, encoded))
        if old:
            out += [(piece, None) for piece in _named(key, old)]
        return out

    def __setitem__(self, key: str, value: Any) -> None:
        apply_entries(self.store, self.entries(key, value))

    def __delitem__(self, key: str) -> None:
        if self.store.get(key) is None:
            raise KeyError(key)
        apply_entries(self.store, self.entries(key, None))

    def __iter__(self) -> Iterator[str]:
        return (key for key in self.store if not key.startswith(PIECE_PREFIX))

    def stray_pieces(self) -> list[str]:
        """Pieces held that no manifest names: none, unless a crash cut a write short.

        >>> values = EncodedValues({"~piece/2.0/k": b"[1,"}, piece_bytes=4)
        >>> values.stray_pieces()
        ['~piece/2.0/k']
        """
        named = set()
        for key in self:
            if (manifest := _manifest(self.store.get(key))) is not None:
                named.update(_named(key, manifest))
        return sorted(key for key in self.store
                      if key.startswith(PIECE_PREFIX) and key not in named)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def apply_entries(store: MutableMapping[str, bytes],
                  entries: Iterable[tuple[str, bytes | None]]) -> None:
    for key, encoded in entries:
        if encoded is None:
            with contextlib.suppress(KeyError):
                del store[key]
        else:
            store[key] = encoded


class ChangelogWriter:
    """Writes to one Faust table of encoded values (``value_type=bytes``), sent as
    record batches (see the module doc).

    ``values`` is the table seen through :class:`EncodedValues` (``values.store``
    is the Faust table): what a value is written as, whole or in pieces, is its
    choice. ``producer`` returns the started aiokafka producer (Faust's own, so that
    its commit-time flush covers these batches); ``on_failure(topic, exc)`` is
    called if the broker refuses a batch.
    """

    def __init__(self, values: EncodedValues, producer: Callable[[], Any],
                 on_failure: Callable[[str, BaseException], None]) -> None:
        self.values = values
        self.table = values.store
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
            # A tombstone (None) recovery applies as one; a long value in pieces.
            for entry_key, encoded_value in self.values.entries(key, value):
                encoded_key = orjson.dumps(entry_key)
                if batch.append(key=encoded_key, value=encoded_value, timestamp=None) is None:
                    await self._send(producer, batch, topic, partition)
                    batch = producer.create_batch()
                    # An empty batch takes any one record, whatever its size.
                    batch.append(key=encoded_key, value=encoded_value, timestamp=None)
                apply_entries(store, ((entry_key, encoded_value),))
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
