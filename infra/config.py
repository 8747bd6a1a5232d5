"""Settings every fundwatch command reads: environment first, then the config file.

The contract fixes three names (``FUNDWATCH_BOOTSTRAP_SERVERS``, ``FUNDWATCH_DB_URL``,
``FUNDWATCH_CONFIG``); the rest are ours. The config file is TOML (read with the
standard library's ``tomllib``, so no extra dependency) with a ``[fundwatch]`` table
whose keys are the lower-case setting names below, e.g.::

    [fundwatch]
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"
    db_url = "postgresql+psycopg://fundwatch@db/fundwatch"
    partitions = 12
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"

>>> s = Settings.load(env={"FUNDWATCH_PARTITIONS": "8"})
>>> s.partitions, s.embedded_broker
(8, True)
>>> s.topic("alerts")
'fundwatch.alerts'
"""
from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from streams.watermark import DEFAULT_LATENESS_S


class ConfigError(ValueError):
    """A setting is wrong; the message names where it came from and why."""


# Public topics are part of the contract; internal ones carry the pipeline's own
# repartitioned streams and are free to change.
TOPICS = {
    "settlements": "settlements",
    "contributions": "contributions",
    "alerts": "alerts",
    "deadletter": "deadletter",
    "admit": "internal.admit",
    "detect": "internal.detect",
    "metrics": "internal.metrics",
    "scores": "scores",  # what the online models scored (detectors/, `replay --scores-out`)
}


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str | None = None
    db_url: str | None = None
    config_path: str | None = None
    topic_prefix: str = "fundwatch."
    partitions: int = 4
    replication_factor: int = 1
    app_id: str = "fundwatch"
    data_dir: str = "fundwatch-data"
    pools_path: str | None = None  # the pool registry (contract pools/v1, YAML)
    # How far behind the newest event time a record may arrive and still be on time
    # for the days it belongs to (streams.watermark).
    allowed_lateness_s: int = DEFAULT_LATENESS_S
    # How many days behind the watermark the ledger remembers record ids (duplicates,
    # reversals); a record of a day forgotten is rejected as beyond_retention. 0 keeps
    # every id for ever (the ledger then grows with every day). 400: a reversal within
    # the settlement year and its annual clearing still finds its original.
    ledger_retention_days: int = 400
    # Tansu answers a consumer's first join after half the session timeout, in whole
    # seconds, whatever the rebalance timeout (measured, session 2, 3, 4, 6, 8 and
    # 10 s: 1, 2, 2, 3, 4 and 5 s; rebalance 1 to 8 s with session 10 s: 5 s each).
    # Faust's defaults (60 s) made a worker wait 30 s before its first record; 10 s
    # makes it 5 s. On a real cluster with many workers raise these.
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 4.0
    heartbeat_interval_s: float = 1.0
    # A worker asked to stop (SIGTERM, Ctrl-C) that has not ended this long after its
    # consumer stopped ends its process (streams.app.stop_within): with the broker
    # gone, Faust's stop waits on the producer's flush for up to its request timeout,
    # 20 minutes. Nothing is lost by it, as after a SIGKILL.
    stop_deadline_s: float = 30.0
    # How long a consumer's fetch may wait at the broker for data. Faust fixes it at
    # 1,500 ms; Tansu answers a waiting fetch only when that time is up, not when
    # data arrives (measured: 650–1,400 ms from send to receive with 1,500, 2 ms
    # with 100), so every internal hop of a caught-up worker waited that long. A real
    # Kafka answers as soon as data arrives; the short wait costs only idle polls.
    fetch_max_wait_ms: int = 20
    # The fetch wait once nothing has come for a second (0: always the one above).
    # Tansu answers a fetch only when its wait is up, so an idle worker polls it:
    # with 20 ms, the worker and the broker kept a sixth of a core busy
    # (bench/idle.py: 0.075 and 0.094 cores; 0.038 and 0.024 with 200 ms).
    # The first record after a quiet second waits up to this long, once; the stages
    # it sets moving fetch at the short wait again.
    fetch_quiet_wait_ms: int = 200
    # Standby copies of other workers' tables each worker keeps warm (Faust's
    # table_standby_replicas). With 1 (Faust's default) a worker taking over a
    # partition has its state at once, but every worker replays every other
    # worker's changelogs all the time: two workers on two cores ran at 0.87× one
    # worker, against 1.68× with none. 0, as Kafka Streams: a partition that moves
    # is rebuilt from its changelog first (seconds per 100 MB of compacted state).
    standby_replicas: int = 0
    # Where a worker keeps its two large tables (the ledger, the rule state):
    # "memory", or "rocksdb" (RocksDB files under data_dir, through rocksdict) for a
    # province whose persons and settlements do not fit a worker's memory
    # (bench/state_memory.py measures both). Either way the changelog topics are
    # the tables' source of truth: a starting worker rebuilds them from there.
    table_store: str = "memory"
    # The longest table value (JSON bytes) written to a changelog as one message; a
    # longer one, such as a large pharmacy chain's rule state, is written in pieces
    # (streams.changelog). Keep it below the changelog topics' max.message.bytes
    # (a broker's default: 1,048,588 bytes, the batch's overhead included).
    state_piece_bytes: int = 512 * 1024
    # How much of the values written in pieces (JSON bytes) a worker keeps decoded
    # between batches, the most recently used first: a large chain's state is read
    # by batch after batch, and decoding it each time cost more than the rules'
    # work on the batch (bench/hot_key.py). About four times as much memory as
    # JSON; 0 keeps none.
    state_kept_bytes: int = 32 * 1024 * 1024
    # How the worker compresses what it writes to Kafka: the internal hops (each
    # record's raw and canonical form, the canonical once per detect partition it
    # goes to), the changelogs, alerts and scores: 4.1 KB per 557-byte settlement
    # (bench/compression.py). The broker's CPU follows the bytes: with zstd Tansu
    # kept about half the cores busy (two workers: 0.275 → 0.175). "none" for
    # consumers of the alert topic that cannot read zstd (Kafka has since 2.1).
    compression_type: str = "zstd"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    rules: Mapping = field(default_factory=dict)
    # Alert delivery (sinks.routing): the [notify] table of the config file, and the
    # key of the person pseudonyms notifications carry instead of person ids.
    notify: Mapping = field(default_factory=dict, repr=False)  # its URLs carry tokens
    notify_secret: str | None = field(default=None, repr=False)

    @property
    def embedded_broker(self) -> bool:
        return not self.bootstrap_servers

    def topic(self, name: str) -> str:
        return self.topic_prefix + TOPICS[name]

    def changelog_topic(self, table: str) -> str:
        """Where a table of the workers keeps its changes: Faust names it after the app.

        >>> Settings().changelog_topic("rule-state")
        'fundwatch-rule-state-changelog'
        """
        return f"{self.app_id}-{table}-changelog"

    def public_topics(self) -> list[str]:
        return [self.topic(n) for n in ("settlements", "contributions", "alerts", "deadletter")]

    def all_topics(self) -> list[str]:
        return [self.topic(n) for n in TOPICS]

    def alert_store_url(self) -> str:
        return self.db_url or f"sqlite:///{Path('fundwatch-alerts.db').resolve()}"

    def routing(self):
        """The notification routes (``sinks.routing.Routing``); empty without [notify]."""
        from sinks.routing import Routing

        return Routing.from_config(self.notify, self.config_path or "[notify]",
                                   secret=self.notify_secret)

    def security_problems(self) -> list[str]:
        """What is wrong with the cluster security settings, each naming its variable.

        >>> Settings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN").security_problems()
        ['FUNDWATCH_SASL_USERNAME and FUNDWATCH_SASL_PASSWORD are needed with PLAIN']
        >>> Settings(security_protocol="SSL", ssl_certfile="c.pem").security_problems()
        ['FUNDWATCH_SSL_CERTFILE and FUNDWATCH_SSL_KEYFILE go together (client certificate)', 'FUNDWATCH_SSL_CERTFILE: c.pem does not exist']
        """
        problems = []
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            problems.append(f"FUNDWATCH_SECURITY_PROTOCOL: {protocol!r} is not one of "
                            f"{', '.join(SECURITY_PROTOCOLS)}")
        if protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                problems.append(f"FUNDWATCH_SASL_MECHANISM: {self.sasl_mechanism!r} is not one "
                                f"of {', '.join(SASL_MECHANISMS)} (needed with {protocol})")
            elif not (self.sasl_username and self.sasl_password):
                problems.append("FUNDWATCH_SASL_USERNAME and FUNDWATCH_SASL_PASSWORD are "
                                f"needed with {self.sasl_mechanism}")
        elif self.sasl_mechanism:
            problems.append(f"FUNDWATCH_SASL_MECHANISM is set but FUNDWATCH_SECURITY_PROTOCOL "
                            f"is {protocol} (SASL_PLAINTEXT or SASL_SSL uses it)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            problems.append("FUNDWATCH_SSL_CERTFILE and FUNDWATCH_SSL_KEYFILE go together "
                            "(client certificate)")
        for var, path in (("FUNDWATCH_SSL_CAFILE", self.ssl_cafile),
                          ("FUNDWATCH_SSL_CERTFILE", self.ssl_certfile),
                          ("FUNDWATCH_SSL_KEYFILE", self.ssl_keyfile)):
            if path and not Path(path).is_file():
                problems.append(f"{var}: {path} does not exist")
        if (self.ssl_cafile or self.ssl_certfile) and not protocol.endswith("SSL"):
            problems.append(f"TLS files are set but FUNDWATCH_SECURITY_PROTOCOL is {protocol} "
                            "(SSL or SASL_SSL uses them)")
        if not problems:
            # Files that exist but hold no certificate, or a key that is not the
            # certificate's: said at start, not as a worker's traceback.
            try:
                self.ssl_context()
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every connection to the cluster (``SSL`` and
        ``SASL_SSL``), the worker's (Faust's) and every other client's: the broker's
        certificate checked against ``FUNDWATCH_SSL_CAFILE`` (the system's
        authorities without it) and its host name against the address dialled; the
        client certificate, when the cluster asks for one. None for plaintext.

        >>> Settings().ssl_context() is None
        True
        >>> Settings(security_protocol="SASL_SSL").ssl_context().check_hostname
        True
        """
        if not self.security_protocol.upper().endswith("SSL"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"FUNDWATCH_SSL_CAFILE: {self.ssl_cafile} holds no certificate "
                              f"authority usable for TLS ({exc})") from None
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"FUNDWATCH_SSL_CERTFILE and FUNDWATCH_SSL_KEYFILE: "
                                  f"{self.ssl_certfile} and {self.ssl_keyfile} are not a "
                                  f"certificate and its key ({exc})") from None
        return context

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict = {}
        path = env.get("FUNDWATCH_CONFIG")
        if path:
            values.update(_read_file(Path(path)))
            values["config_path"] = path
        for f in fields(cls):
            var = "FUNDWATCH_" + f.name.upper()
            if var in env and f.name not in ("rules", "notify", "config_path"):
                values[f.name] = _coerce(f.name, env[var], var)
        settings = cls(**values)
        problems = settings.security_problems()
        if problems:
            raise ConfigError("cluster security: " + "; ".join(problems))
        if settings.notify:
            settings.routing()  # a wrong route stops start-up, naming file and key
        return settings


_INTS = {"partitions", "replication_factor", "allowed_lateness_s", "fetch_max_wait_ms",
         "fetch_quiet_wait_ms", "standby_replicas", "ledger_retention_days",
         "state_piece_bytes", "state_kept_bytes"}
_MAY_BE_ZERO = {"standby_replicas", "ledger_retention_days", "fetch_quiet_wait_ms",
                "state_kept_bytes"}
# A piece of a few bytes would make a chain's state thousands of messages.
_AT_LEAST = {"state_piece_bytes": 1024}
_CHOICES = {"table_store": ("memory", "rocksdb"),
            "compression_type": ("zstd", "lz4", "snappy", "gzip", "none")}
_FLOATS = {"session_timeout_s", "rebalance_timeout_s", "heartbeat_interval_s",
           "stop_deadline_s"}


def _coerce(name: str, raw, where: str):
    try:
        if name in _INTS:
            value = int(raw)
            least = _AT_LEAST.get(name, 0 if name in _MAY_BE_ZERO else 1)
            if value < least:
                raise ValueError(f"must be at least {least}")
            return value
        if name in _FLOATS:
            value = float(raw)
            if not value > 0:  # (a NaN is not either)
                raise ValueError("must be more than 0")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {name} = {raw!r} is not valid ({exc})") from None
    if raw is not None and not isinstance(raw, str):
        raise ConfigError(f"{where}: {name} must be a string, got {type(raw).__name__}")
    if name in _CHOICES and raw not in _CHOICES[name]:
        raise ConfigError(f"{where}: {name} = {raw!r} is not one of "
                          f"{', '.join(_CHOICES[name])}")
    return raw or None if name != "topic_prefix" else raw


def _read_file(path: Path) -> dict:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file named by FUNDWATCH_CONFIG does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    known = {f.name for f in fields(Settings)} - {"config_path", "notify"}
    section = doc.get("fundwatch", {})
    values = {}
    for key, raw in section.items():
        if key not in known:
            raise ConfigError(f"{path}: [fundwatch].{key} is not a known setting "
                              f"(known: {', '.join(sorted(known - {'rules'}))})")
        if key == "rules":
            continue
        values[key] = _coerce(key, raw, f"{path}: [fundwatch].{key}")
    if "rules" in doc:
        values["rules"] = doc["rules"]
    if "notify" in doc:
        values["notify"] = doc["notify"]
    return values
