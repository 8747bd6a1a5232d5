"""What a Kafka request asks of the cluster's authorizer, read from its bytes.

The security tests' front (``tests/secure_front.py``) reads every request a user's
clients send and asks this module which operations on which topics and groups
Kafka's authorizer would check for it (the table in Kafka's documentation,
"Operations and Resources on Protocols"); the test then holds them against the
ACLs ``fundwatch acls`` prints for that user's role. Only the requests and
versions fundwatch's clients (aiokafka, kafka-python, Faust) send are read; any
other is reported as unreadable, and the test fails on it rather than pass it.

>>> import struct
>>> header = struct.pack(">hhih", 10, 1, 7, 3) + b"cli"
>>> authorizations(header + struct.pack(">h", 9) + b"fundwatch" + b"\\0")
(10, 1, [('group', 'fundwatch', 'Describe')])
"""
from __future__ import annotations

import struct

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, CREATE_TOPICS = 12, 13, 14, 19
SASL_HANDSHAKE, API_VERSIONS, SASL_AUTHENTICATE = 17, 18, 36
#: The first version of each request with flexible (compact, tagged) encoding.
FLEXIBLE_FROM = {PRODUCE: 9, FETCH: 12, LIST_OFFSETS: 6, METADATA: 9, OFFSET_COMMIT: 8,
                 OFFSET_FETCH: 6, FIND_COORDINATOR: 3, JOIN_GROUP: 6, HEARTBEAT: 4,
                 LEAVE_GROUP: 4, SYNC_GROUP: 4, CREATE_TOPICS: 5}
#: Requests of a group that the authorizer checks as Read on the group, by nothing else.
GROUP_READS = (JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP)


class Unreadable(ValueError):
    """A request (or version) this reader does not know."""


class _Body:
    def __init__(self, data: bytes, at: int, flexible: bool) -> None:
        self.data, self.at, self.flexible = data, at, flexible

    def fixed(self, fmt: str):
        value = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value[0] if len(value) == 1 else value

    def skip(self, size: int) -> None:
        self.at += size

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def length(self, fixed: str) -> int:
        """A string's, bytes' or array's length; -1 for null."""
        return self.uvarint() - 1 if self.flexible else self.fixed(fixed)

    def string(self) -> str | None:
        n = self.length(">h")
        if n < 0:
            return None
        self.at += n
        return self.data[self.at - n:self.at].decode()

    def blob(self) -> int:
        size = max(0, self.length(">i"))  # read first: it moves ``at``
        self.at += size
        return size

    def array(self, item) -> list:
        return [item() for _ in range(max(0, self.length(">i")))]

    def tags(self) -> None:
        if self.flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                size = self.uvarint()
                self.at += size


def _body(frame: bytes) -> tuple[int, int, _Body]:
    """A request frame's api key, version, and its body past the request header."""
    api_key, version = struct.unpack_from(">hh", frame)
    flexible = version >= FLEXIBLE_FROM.get(api_key, 99)
    n = struct.unpack_from(">h", frame, 8)[0]
    body = _Body(frame, 10 + max(0, n), flexible)
    body.tags()  # the request header's own tagged fields (header v2)
    return api_key, version, body


def authorizations(frame: bytes) -> tuple[int, int, list[tuple[str, str, str]]]:
    """(api key, version, [(resource kind, name, operation), …]) for one request frame
    (without its length prefix). Raises ``Unreadable`` for what it cannot read."""
    api_key, version, body = _body(frame)
    if api_key in (API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE):
        return api_key, version, []
    reader = _READERS.get(api_key)
    if reader is None:
        raise Unreadable(f"request {api_key} v{version}")
    return api_key, version, reader(body, version)


def _topics(body: _Body, operation: str, partition) -> list:
    """An array of topics, each a name and its partitions (``partition`` skips one);
    each named topic asks ``operation``."""
    def topic():
        name = body.string()
        body.array(partition)
        body.tags()
        return ("topic", name, operation)
    return body.array(topic)


def written_or_read(frame: bytes) -> tuple[int, list[tuple[str, list[int]]], dict[str, int]]:
    """A Produce or Fetch request's partitions, per topic, and its ``acks`` (a
    Produce with 0 gets no answer; a Fetch always does: 1), and for a Produce the
    largest record set it writes to a partition of each topic (a broker holds it
    against the topic's ``max.message.bytes``): what a front answering it in the
    broker's place needs.

    >>> header = struct.pack(">hhih", PRODUCE, 7, 9, 0) + struct.pack(">hhi", -1, -1, 30000)
    >>> batch = struct.pack(">i", 2) + b"rb"
    >>> topic = struct.pack(">h", 6) + b"alerts" + struct.pack(">ii", 1, 3) + batch
    >>> written_or_read(header + struct.pack(">i", 1) + topic)
    (-1, [('alerts', [3])], {'alerts': 2})
    """
    api_key, version, body = _body(frame)
    largest: dict[str, int] = {}
    if api_key == PRODUCE and 3 <= version <= 8:
        body.string()  # transactional id: a transactional producer would need more
        acks = body.fixed(">h")
        body.skip(4)  # timeout

        def partition():
            index = body.fixed(">i")
            largest[name] = max(largest.get(name, 0), body.blob())
            return index
    elif api_key == FETCH and 7 <= version <= 11:
        acks = 1
        body.skip(4 + 4 + 4 + 4 + 1 + 4 + 4)  # replica, wait, min, max, isolation, session

        def partition():
            index = body.fixed(">i")
            body.skip((4 if version >= 9 else 0) + 8 + 8 + 4)
            return index
    else:
        raise Unreadable(f"request {api_key} v{version} is not a Produce v3-8 or Fetch v7-11")

    def topic():
        nonlocal name
        name = body.string()
        return name, body.array(partition)
    name = None
    return acks, body.array(topic), largest


def _produce(body: _Body, version: int) -> list:
    return [("topic", name, "Write") for name, _ in written_or_read(body.data)[1]]


def _fetch(body: _Body, version: int) -> list:
    return [("topic", name, "Read") for name, _ in written_or_read(body.data)[1]]


def _list_offsets(body: _Body, version: int) -> list:
    if not 2 <= version <= 5:
        raise Unreadable(f"ListOffsets v{version}")
    body.skip(4 + 1)  # replica, isolation
    per_partition = 4 + (4 if version >= 4 else 0) + 8
    return _topics(body, "Describe", lambda: body.skip(per_partition))


def _metadata(body: _Body, version: int) -> list:
    if not 1 <= version <= 12:
        raise Unreadable(f"Metadata v{version}")

    def topic():
        if version >= 10:
            body.skip(16)  # topic id
        name = body.string()
        body.tags()
        return ("topic", name, "Describe")
    # A null list asks for every topic: the answer holds only those described.
    return [t for t in body.array(topic) if t[1] is not None]


def _offset_commit(body: _Body, version: int) -> list:
    group, topics = _committed(body, version)
    return [("group", group, "Read")] + [("topic", name, "Read") for name, _ in topics]


def committed(frame: bytes) -> tuple[str, list[tuple[str, list[int]]]]:
    """An OffsetCommit request's group and its partitions, per topic: what a front
    answering it in the broker's place needs.

    >>> header = struct.pack(">hhih", OFFSET_COMMIT, 2, 5, 0)
    >>> body = struct.pack(">h", 2) + b"fw" + struct.pack(">ih", 3, 1) + b"m"
    >>> body += struct.pack(">q", -1) + struct.pack(">i", 1) + struct.pack(">h", 1) + b"t"
    >>> body += struct.pack(">iiqh", 1, 0, 42, -1)   # partition 0 at offset 42, no metadata
    >>> committed(header + body)
    ('fw', [('t', [0])])
    """
    api_key, version, body = _body(frame)
    if api_key != OFFSET_COMMIT:
        raise Unreadable(f"request {api_key} is not an OffsetCommit")
    return _committed(body, version)


def _committed(body: _Body, version: int) -> tuple[str, list[tuple[str, list[int]]]]:
    if not 2 <= version <= 7:
        raise Unreadable(f"OffsetCommit v{version}")
    group = body.string()
    body.skip(4)  # generation
    body.string()  # member id
    if version >= 7:
        body.string()  # group instance id
    if version <= 4:
        body.skip(8)  # retention

    def partition():
        index = body.fixed(">i")
        body.skip(8 + (4 if version >= 6 else 0))
        body.string()  # metadata
        return index

    def topic():
        name = body.string()
        return name, body.array(partition)
    return group, body.array(topic)


def _offset_fetch(body: _Body, version: int) -> list:
    if not 1 <= version <= 5:
        raise Unreadable(f"OffsetFetch v{version}")
    group = body.string()
    return [("group", group, "Describe")] + _topics(body, "Describe",
                                                      lambda: body.skip(4))


def _find_coordinator(body: _Body, version: int) -> list:
    if not 0 <= version <= 2:
        raise Unreadable(f"FindCoordinator v{version}")
    key = body.string()
    kind = body.fixed(">b") if version >= 1 else 0
    if kind != 0:
        raise Unreadable("FindCoordinator for a transaction")
    return [("group", key, "Describe")]


def _group_read(body: _Body, version: int) -> list:
    return [("group", body.string(), "Read")]


def _create_topics(body: _Body, version: int) -> list:
    if not 2 <= version <= 7:
        raise Unreadable(f"CreateTopics v{version}")

    def topic():
        name = body.string()
        body.skip(4 + 2)  # partitions, replication

        def assignment():
            body.skip(4)
            body.array(lambda: body.skip(4))
            body.tags()
        body.array(assignment)

        def config():
            body.string()
            body.string()
            body.tags()
        body.array(config)
        body.tags()
        return ("topic", name, "Create")
    return body.array(topic)


_READERS = {PRODUCE: _produce, FETCH: _fetch, LIST_OFFSETS: _list_offsets,
            METADATA: _metadata, OFFSET_COMMIT: _offset_commit, OFFSET_FETCH: _offset_fetch,
            FIND_COORDINATOR: _find_coordinator, CREATE_TOPICS: _create_topics,
            **{key: _group_read for key in GROUP_READS}}
