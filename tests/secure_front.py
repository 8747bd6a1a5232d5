"""A TLS and SASL listener in front of the embedded broker, for the security tests.

A real cluster takes the workers on a SASL_SSL listener (``infra/deploy``). Tansu
0.6 cannot be one here: its ``--cert`` and ``--key`` cannot be given together,
and ``--authentication`` checks users that only ``tansu user create`` makes, which
a broker that already requires authentication refuses, while its memory storage
forgets them at restart (its PostgreSQL storage is not in this build). So this
front stands in for the cluster's listener — the one part that cannot run here,
written to the Kafka protocol: it ends TLS (with the client certificate checked,
when asked), answers the SASL handshake and authentication itself (PLAIN and
SCRAM-SHA-256/512, RFC 5802, the server's proof included), and from then on
relays the connection's requests to the real broker, which advertises the front's
port, so that every client connection, the group coordinator's and the table
recovery's included, comes through it. A client that sends anything else before authenticating is
dropped, as Kafka drops it. On the way it notes, per user, what Kafka's
authorizer would check for each request (``tests/kafka_requests.py``), for the
test of the ACLs ``fundwatch acls`` prints. It enforces none of them but those a
test takes away, as an authorizer without that user's ACL would: it refuses a
Metadata request naming a topic the user may not describe, a Produce request
writing to one it may not write, a Fetch reading one it may not read. Its answers
keep the connection's order: a client matches answers to requests in the order
it sent them.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import threading
from collections import defaultdict
from pathlib import Path

from infra.broker import free_port
from tests.kafka_requests import (
    API_VERSIONS,
    FETCH,
    FIND_COORDINATOR,
    HEARTBEAT,
    METADATA,
    OFFSET_COMMIT,
    PRODUCE,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    Unreadable,
    authorizations,
    committed,
    written_or_read,
)

UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER, MESSAGE_TOO_LARGE = 3, 6, 10
TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED = 29, 30
SCRAM_ITERATIONS = 4096
CERTIFICATE = "(client certificate)"  # the user of a connection on TLS alone


class Certificates:
    """A test authority, the broker's certificate for 127.0.0.1 and a worker's
    client certificate, as PEM files under ``directory`` (trustme)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.authority = trustme.CA()
        self.server = self.authority.issue_cert("127.0.0.1", "localhost")
        directory.mkdir(parents=True, exist_ok=True)
        self.cafile = str(directory / "ca.pem")
        self.authority.cert_pem.write_to_path(self.cafile)
        client = self.authority.issue_cert("fundwatch-worker")
        self.client_certfile = str(directory / "worker.pem")
        self.client_keyfile = str(directory / "worker.key")
        client.cert_chain_pems[0].write_to_path(self.client_certfile)
        client.private_key_pem.write_to_path(self.client_keyfile)


class SecureFront:
    """127.0.0.1:``port`` with TLS (and SASL when ``users`` are given), relayed to the
    broker at 127.0.0.1:``upstream_port``. ``admitted`` counts the connections let
    through, ``sessions`` lists (user, mechanism) of each authenticated one,
    ``refused`` says why each refused one was refused.
    Its own event loop runs in a thread (asyncio's TLS works on one thread's memory
    buffers: an SSL socket read and written from two threads is not safe)."""

    def __init__(self, certificates: Certificates, users: dict[str, str] | None = None,
                 require_client_certificate: bool = False) -> None:
        self.port, self.upstream_port = free_port(), free_port()
        self.users = users
        self.admitted = 0
        self.sessions: list[tuple[str, str]] = []
        self.refused: list[str] = []
        # User → {(api key, resource kind, name, operation)}: what each user's requests
        # would ask of Kafka's authorizer (tests/kafka_requests); and what could not be read.
        self.asked: dict[str, set] = defaultdict(set)
        self.unreadable: list[str] = []
        # User → topics its Metadata requests are refused (TOPIC_AUTHORIZATION_FAILED);
        # and each request so refused: (user, topics named, whether it let them be created).
        self.denied: dict[str, set] = defaultdict(set)
        self.refused_metadata: list[tuple[str, tuple, bool]] = []
        # User → topics its Produce (Fetch) requests are refused; and each refusal:
        # (user, the denied topics the request wrote to or read).
        self.denied_writes: dict[str, set] = defaultdict(set)
        self.refused_writes: list[tuple[str, tuple]] = []
        self.denied_reads: dict[str, set] = defaultdict(set)
        self.refused_reads: list[tuple[str, tuple]] = []
        # Per request (OffsetCommit, Heartbeat, FindCoordinator): user → consumer
        # groups it is refused for (GROUP_AUTHORIZATION_FAILED, as without the ACL on
        # the group); and each refusal: (user, group).
        self.denied_groups: dict[int, dict[str, set]] = {
            api: defaultdict(set) for api in _GROUP_ANSWERS}
        self.refused_groups: dict[int, list[tuple[str, str]]] = {
            api: [] for api in _GROUP_ANSWERS}
        # Topic → its max.message.bytes, which Tansu does not enforce: a Produce
        # writing a larger record set to it is refused (MESSAGE_TOO_LARGE), as a
        # broker refuses it. The largest record set written to each topic, and each
        # refusal: (user, topic, size).
        self.max_message_bytes: dict[str, int] = {}
        self.largest_written: dict[str, int] = defaultdict(int)
        self.refused_sizes: list[tuple[str, str, int]] = []
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificates.server.configure_cert(self._tls)
        if require_client_certificate:
            self._tls.verify_mode = ssl.CERT_REQUIRED
            certificates.authority.configure_trust(self._tls)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True,
                         name="secure-front").start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        def stop() -> None:
            self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self._tls)
        except (ssl.SSLError, OSError) as exc:
            self.refused.append(f"TLS: {exc}")
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            user = CERTIFICATE if self.users is None else await self._authenticate(
                reader, writer, up_reader, up_writer)
        except (OSError, ValueError, struct.error, asyncio.IncompleteReadError):
            user = None
        if user is None:
            writer.close()
            up_writer.close()
            return
        self.admitted += 1
        # The connection's answers, in the order of its requests: None for the
        # broker's next answer, bytes for one made here, False for the end.
        answers: asyncio.Queue = asyncio.Queue()
        await asyncio.gather(self._relay_requests(user, reader, answers, up_writer),
                             _answer_in_order(answers, up_reader, writer))

    async def _relay_requests(self, user: str, reader: asyncio.StreamReader,
                              answers: asyncio.Queue,
                              up_writer: asyncio.StreamWriter) -> None:
        """Relay each request, noting what Kafka's authorizer would check for it. A
        Metadata v5 request naming a topic ``denied`` to the user, a Produce
        request writing to a topic in ``denied_writes`` and a Fetch reading one in
        ``denied_reads`` are answered here, as an authorizer without that user's
        ACL answers: TOPIC_AUTHORIZATION_FAILED for each denied topic, and an
        OffsetCommit, a Heartbeat or a FindCoordinator of a group in
        ``denied_groups`` GROUP_AUTHORIZATION_FAILED; a Produce
        writing a record set larger than a topic's ``max_message_bytes``, as a broker
        answers it: MESSAGE_TOO_LARGE. (A real broker would still serve the
        request's other topics; this front serves none of them and answers them
        NOT_LEADER_OR_FOLLOWER, which a client retries — not written, and not
        lost.)"""
        try:
            while True:
                frame = await _read_frame(reader)
                asked, acks, parts, sizes = [], 1, [], {}  # acks=0: a Produce not answered
                try:
                    api_key, version, asked = authorizations(frame)
                    self.asked[user].update((api_key, *a) for a in asked)
                    if api_key in (PRODUCE, FETCH):
                        acks, parts, sizes = written_or_read(frame)
                except (Unreadable, struct.error, IndexError, UnicodeDecodeError) as exc:
                    api_key, version = struct.unpack_from(">hh", frame)
                    self.unreadable.append(f"{user}: request {api_key} v{version}: {exc!r}")
                named = [name for _, name, _ in asked]
                correlation = struct.unpack_from(">i", frame, 4)[0]
                if api_key == METADATA and version == 5 and set(named) & self.denied[user]:
                    # v5's last field: allow_auto_topic_creation.
                    self.refused_metadata.append((user, tuple(named), bool(frame[-1])))
                    answers.put_nowait(_response(
                        correlation, _metadata_v5_answer(named, self.denied[user])))
                    continue
                if api_key in _GROUP_ANSWERS and named and \
                        named[0] in self.denied_groups[api_key][user]:
                    self.refused_groups[api_key].append((user, named[0]))
                    answers.put_nowait(_response(
                        correlation, _GROUP_ANSWERS[api_key](version, frame)))
                    continue
                denied, refusals, answer = (
                    (self.denied_writes[user], self.refused_writes, _produce_answer)
                    if api_key == PRODUCE else
                    (self.denied_reads[user], self.refused_reads, _fetch_answer))
                refused = sorted({name for name, _ in parts} & denied)
                if refused:
                    refusals.append((user, tuple(refused)))
                    if acks != 0:
                        answers.put_nowait(_response(correlation,
                                                     answer(version, parts, denied)))
                    continue
                too_large = {name for name, size in sizes.items()
                             if size > self.max_message_bytes.get(name, size)}
                for name, size in sizes.items():
                    self.largest_written[name] = max(self.largest_written[name], size)
                    if name in too_large:
                        self.refused_sizes.append((user, name, size))
                if too_large:
                    if acks != 0:
                        answers.put_nowait(_response(correlation, _produce_answer(
                            version, parts, too_large, MESSAGE_TOO_LARGE)))
                    continue
                up_writer.write(_frame_bytes(frame))
                await up_writer.drain()
                if acks != 0:
                    answers.put_nowait(None)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            answers.put_nowait(False)
            up_writer.close()

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> str | None:
        mechanism = None
        scram = None
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack_from(">hhi", frame)
            if api_key == API_VERSIONS:  # the broker says what it speaks
                up_writer.write(_frame_bytes(frame))
                writer.write(_frame_bytes(await _read_frame(up_reader)))
                await writer.drain()
                continue
            body = frame[8 + 2 + max(0, struct.unpack_from(">h", frame, 8)[0]):]
            if api_key == SASL_HANDSHAKE:
                offered = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                asked = _string(body, 0)
                error = 0 if asked in offered else UNSUPPORTED_SASL_MECHANISM
                mechanism = asked if error == 0 else None
                writer.write(_response(correlation, struct.pack(">hi", error, len(offered))
                                       + b"".join(_pack_string(m) for m in offered)))
                await writer.drain()
                if error:
                    self.refused.append(f"mechanism {asked} not offered")
                    return None
                continue
            if api_key != SASL_AUTHENTICATE or mechanism is None or version > 2:
                self.refused.append(f"request {api_key} v{version} before authentication")
                return None
            flexible = version >= 2  # compact fields and tagged fields (KIP-482)
            if flexible:
                body = body[1:]  # the request header's tagged fields: none
                n, at = _uvarint(body, 0)
                token = body[at:at + n - 1]
            else:
                token = body[4:4 + struct.unpack_from(">i", body)[0]]
            if mechanism == "PLAIN":
                _, user, password = token.decode().split("\0")
                ok = self.users.get(user) == password
                reply, done = b"", True
            else:
                scram = scram or _Scram(mechanism, self.users)
                ok, reply, done = scram.step(token)
                user = scram.user
            error, message = (0, None) if ok else (
                SASL_AUTHENTICATION_FAILED,
                ("Authentication failed: invalid username or password"))
            if flexible:
                text = b"" if message is None else message.encode()
                payload = (b"\0" + struct.pack(">h", error)  # header's tagged fields
                           + (_varint(0) if message is None else _varint(len(text) + 1) + text)
                           + _varint(len(reply) + 1) + reply + struct.pack(">q", 0) + b"\0")
            else:
                payload = (struct.pack(">h", error) + _pack_nullable(message)
                           + struct.pack(">i", len(reply)) + reply)
                if version >= 1:
                    payload += struct.pack(">q", 0)  # session lifetime: none
            writer.write(_response(correlation, payload))
            await writer.drain()
            if not ok:
                self.refused.append(f"{mechanism} for {user!r}: wrong user or password")
                return None
            if done:
                self.sessions.append((user, mechanism))
                return user


class _Scram:
    """The server's side of SCRAM (RFC 5802, RFC 7677), one connection's exchange."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha512
        self.users = users
        self.user = None
        self.first_bare = self.server_first = None

    def step(self, token: bytes) -> tuple[bool, bytes, bool]:
        message = token.decode()
        if self.server_first is None:  # client-first: "n,,n=user,r=nonce"
            self.first_bare = message.split(",", 2)[2]
            fields = dict(f.split("=", 1) for f in self.first_bare.split(","))
            self.user = fields["n"]
            self.salt = os.urandom(16)
            self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = (f"r={self.nonce},s={base64.b64encode(self.salt).decode()},"
                                 f"i={SCRAM_ITERATIONS}")
            return True, self.server_first.encode(), False
        # client-final: "c=biws,r=nonce,p=proof"
        without_proof, _, proof = message.rpartition(",p=")
        fields = dict(f.split("=", 1) for f in without_proof.split(","))
        password = self.users.get(self.user)
        if password is None or fields.get("r") != self.nonce:
            return False, b"", True
        salted = hashlib.pbkdf2_hmac(self.hash().name, password.encode(), self.salt,
                                     SCRAM_ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(self.hash(client_key).digest(), auth_message, self.hash).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            return False, b"", True
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        server_signature = hmac.new(server_key, auth_message, self.hash).digest()
        return True, b"v=" + base64.b64encode(server_signature), True


def _metadata_v5_answer(topics: list[str], denied: set) -> bytes:
    """A Metadata v5 answer without brokers: each topic refused if ``denied``, else
    unknown (UNKNOWN_TOPIC_OR_PARTITION, as for a topic not made yet)."""
    answer = struct.pack(">iihi", 0, 0, -1, -1)  # throttle, no brokers, cluster id, controller
    answer += struct.pack(">i", len(topics))
    for name in topics:
        error = TOPIC_AUTHORIZATION_FAILED if name in denied else UNKNOWN_TOPIC_OR_PARTITION
        answer += struct.pack(">h", error) + _pack_string(name) + struct.pack(">bi", 0, 0)
    return answer


def _produce_answer(version: int, written: list, denied: set,
                    refusal: int = TOPIC_AUTHORIZATION_FAILED) -> bytes:
    """A Produce v3-8 answer writing nothing: each partition of a ``denied`` topic
    refused (``refusal``), the others NOT_LEADER_OR_FOLLOWER (retried by the
    producer)."""
    answer = struct.pack(">i", len(written))
    for name, partitions in written:
        error = refusal if name in denied else NOT_LEADER_OR_FOLLOWER
        answer += _pack_string(name) + struct.pack(">i", len(partitions))
        for index in partitions:
            # base offset, log append time; then log start offset (v5); then the
            # record errors and the error message (v8)
            answer += struct.pack(">ihqq", index, error, -1, -1)
            if version >= 5:
                answer += struct.pack(">q", -1)
            if version >= 8:
                answer += struct.pack(">i", 0) + _pack_nullable(None)
    return answer + struct.pack(">i", 0)  # throttle time


def _offset_commit_answer(version: int, frame: bytes) -> bytes:
    """An OffsetCommit v2-7 answer committing nothing: every partition refused."""
    _, parts = committed(frame)
    answer = struct.pack(">i", 0) if version >= 3 else b""  # throttle time
    answer += struct.pack(">i", len(parts))
    for name, partitions in parts:
        answer += _pack_string(name) + struct.pack(">i", len(partitions))
        for index in partitions:
            answer += struct.pack(">ih", index, GROUP_AUTHORIZATION_FAILED)
    return answer


def _heartbeat_answer(version: int, frame: bytes) -> bytes:
    """A Heartbeat v0-3 answer: refused."""
    throttle = struct.pack(">i", 0) if version >= 1 else b""
    return throttle + struct.pack(">h", GROUP_AUTHORIZATION_FAILED)


def _find_coordinator_answer(version: int, frame: bytes) -> bytes:
    """A FindCoordinator v0-2 answer: refused, no coordinator."""
    if version == 0:
        return struct.pack(">h", GROUP_AUTHORIZATION_FAILED) + struct.pack(
            ">i", -1) + _pack_string("") + struct.pack(">i", -1)
    return (struct.pack(">ih", 0, GROUP_AUTHORIZATION_FAILED) + _pack_nullable(None)
            + struct.pack(">i", -1) + _pack_string("") + struct.pack(">i", -1))


#: The group requests the front may refuse (all versions that fundwatch's clients
#: send are non-flexible: OffsetCommit v2-7, Heartbeat v0-3, FindCoordinator v0-2).
_GROUP_ANSWERS = {OFFSET_COMMIT: _offset_commit_answer, HEARTBEAT: _heartbeat_answer,
                  FIND_COORDINATOR: _find_coordinator_answer}


def _fetch_answer(version: int, read: list, denied: set) -> bytes:
    """A Fetch v7-11 answer with no records: each partition of a ``denied`` topic
    refused, the others NOT_LEADER_OR_FOLLOWER (asked again by the consumer)."""
    answer = struct.pack(">ihii", 0, 0, 0, len(read))  # throttle, error, session
    for name, partitions in read:
        error = TOPIC_AUTHORIZATION_FAILED if name in denied else NOT_LEADER_OR_FOLLOWER
        answer += _pack_string(name) + struct.pack(">i", len(partitions))
        for index in partitions:
            # high watermark, last stable offset, log start offset, no aborted
            # transactions; the preferred read replica (v11); no records
            answer += struct.pack(">ihqqqi", index, error, -1, -1, -1, -1)
            if version >= 11:
                answer += struct.pack(">i", -1)
            answer += struct.pack(">i", -1)
    return answer


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame_bytes(frame: bytes) -> bytes:
    return struct.pack(">i", len(frame)) + frame


def _response(correlation: int, payload: bytes) -> bytes:
    return _frame_bytes(struct.pack(">i", correlation) + payload)


def _string(data: bytes, at: int) -> str:
    n = struct.unpack_from(">h", data, at)[0]
    return data[at + 2:at + 2 + n].decode()


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pack_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _pack_nullable(text: str | None) -> bytes:
    return struct.pack(">h", -1) if text is None else _pack_string(text)


async def _answer_in_order(answers: asyncio.Queue, up_reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Write the connection's answers in the order of its requests: the broker's
    (None in ``answers``: its next answer, which it gives in order) and the front's
    own (bytes), until ``False``."""
    try:
        while (answer := await answers.get()) is not False:
            writer.write(_frame_bytes(await _read_frame(up_reader)) if answer is None
                         else answer)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
