"""The real-cluster deployment: what can be checked without a container engine
(none on these machines). The compose file's worker settings load as fundwatch
reads them, the topics get their retention and cleanup, and wrong security
settings stop start-up naming the variable."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
import yaml

from infra.config import ConfigError, Settings
from infra.topics import DAY_MS, topic_configs

COMPOSE = Path(__file__).resolve().parents[1] / "infra" / "deploy" / "compose.yaml"


def _worker_env(tmp_path) -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    env = dict(compose["services"]["worker"]["environment"])
    # What the operator supplies: .env values, and the mounted files.
    values = {"FUNDWATCH_SASL_PASSWORD": "s3cret", "POSTGRES_PASSWORD": "pg"}
    env = {k: re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: values[m.group(1)], str(v))
           for k, v in env.items()}
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))  # the cluster's authority
    (tmp_path / "fundwatch.toml").write_text("[rules.phantom_bed]\nwarmup = 200\n",
                                             encoding="utf-8")
    env["FUNDWATCH_SSL_CAFILE"] = str(tmp_path / "ca.pem")
    env["FUNDWATCH_CONFIG"] = str(tmp_path / "fundwatch.toml")
    return env


def test_the_compose_workers_settings_load(tmp_path):
    env = _worker_env(tmp_path)
    known = {"FUNDWATCH_" + name.upper() for name in Settings.__dataclass_fields__} | {
        "FUNDWATCH_CONFIG"}
    assert set(env) <= known, set(env) - known  # no misspelt variable
    settings = Settings.load(env=env)
    assert settings.bootstrap_servers == "kafka1:9092,kafka2:9092,kafka3:9092"
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.partitions == 24 and settings.replication_factor == 3
    assert settings.db_url.startswith("postgresql+psycopg://fundwatch:pg@postgres/")
    assert settings.rules["phantom_bed"]["warmup"] == 200
    assert settings.table_store == "rocksdb" and settings.data_dir == "/var/lib/fundwatch"
    assert settings.ledger_retention_days == 400
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    brokers = [s for name, s in compose["services"].items() if name.startswith("kafka")]
    assert len(brokers) >= settings.replication_factor  # every copy on its own broker


def test_the_cluster_authorizes_and_fundwatch_acls_fit_the_compose_worker(tmp_path, capsys):
    """The compose cluster allows nothing without an ACL; ``fundwatch acls`` prints
    the worker's for the user the compose workers log in as, and refuses a principal
    Kafka would not understand. (What each role's ACLs let through is checked
    against real requests in tests/test_secure_cluster.py.)"""
    from streams.cli import main

    kafka = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["kafka1"]
    assert kafka["environment"]["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["environment"]["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    user = _worker_env(tmp_path)["FUNDWATCH_SASL_USERNAME"]

    assert main(["acls", "--feeder", "-", "--auditor", "-", "--alert-reader", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    assert f"# worker: User:{user}" in lines
    assert commands and all(f"--allow-principal User:{user} " in c for c in commands)
    assert any("--topic fundwatch- --resource-pattern-type prefixed" in c for c in commands)
    assert any(c.endswith("--group fundwatch") for c in commands)

    assert main(["acls", "--feeder", "gx-platform"]) == 2
    assert "Kafka names users 'User:<name>'" in capsys.readouterr().err


def test_every_topic_has_its_retention_or_compaction():
    settings = Settings()
    configs = topic_configs(settings)
    assert set(configs) == set(settings.all_topics())
    assert configs[settings.topic("alerts")]["cleanup.policy"] == "compact"
    for name in ("settlements", "contributions", "deadletter", "admit", "detect"):
        config = configs[settings.topic(name)]
        assert config["cleanup.policy"] == "delete"
        assert int(config["retention.ms"]) >= DAY_MS * 7, name


@pytest.mark.parametrize("env, problem", [
    ({"FUNDWATCH_SECURITY_PROTOCOL": "TLS"}, "FUNDWATCH_SECURITY_PROTOCOL: 'TLS' is not one of"),
    ({"FUNDWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, "FUNDWATCH_SASL_MECHANISM: None is not one of"),
    ({"FUNDWATCH_SECURITY_PROTOCOL": "SASL_SSL", "FUNDWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
      "FUNDWATCH_SASL_USERNAME": "fw"}, "FUNDWATCH_SASL_PASSWORD are needed"),
    ({"FUNDWATCH_SASL_MECHANISM": "PLAIN"}, "but FUNDWATCH_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"FUNDWATCH_SECURITY_PROTOCOL": "SSL", "FUNDWATCH_SSL_CAFILE": "/no/such/ca.pem"},
     "FUNDWATCH_SSL_CAFILE: /no/such/ca.pem does not exist"),
])
def test_wrong_security_settings_stop_start_up_naming_the_variable(env, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        Settings.load(env=env)
