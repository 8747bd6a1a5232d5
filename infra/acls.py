"""What each of fundwatch's Kafka users may do on a real cluster, as ACLs.

The topics carry every insured person's settlements; on a cluster with an authorizer
(``infra/deploy/compose.yaml`` turns Kafka's on, allowing nothing by default) each
user gets only what its part needs:

- ``worker`` — the stream workers: read the input topics, read and write their
  own hops and outputs, create the topics they are missing, and keep their tables'
  changelogs and Faust's assignor topic (``<app id>-…``); their consumer group.
- ``feeder`` — a province's settlement platform: write the input topics, no more
  (a Java producer is idempotent by default; since Kafka 2.8, KIP-679, Write on a
  topic is all its InitProducerId needs).
- ``auditor`` — ``replay --kafka``, ``pools``, ``structural``: read the input
  topics and the tables' changelogs; its own replay groups (never joined, never
  committed, but looked up: FindCoordinator and OffsetFetch ask for Describe).
- ``alert_reader`` — a downstream system reading the alerts (not the dead letters,
  which hold whole settlements), in consumer groups named ``<app id>-alerts-…``.

Operations are Kafka's, as its authorizer checks them per request: Describe
(metadata, offsets), Read (fetch, commit, join a group), Write (produce), Create
(topic creation). The worker needs no cluster-level grant: it creates topics
through its topic grants and does not use idempotent or transactional producers.

>>> from infra.config import Settings
>>> worker = grants(Settings(), "worker")
>>> allows(worker, "topic", "fundwatch.settlements", "Read")
True
>>> allows(worker, "topic", "fundwatch.settlements", "Write")
False
>>> allows(worker, "topic", "fundwatch-rule-state-changelog", "Write")
True
>>> allows(grants(Settings(), "feeder"), "topic", "fundwatch.alerts", "Read")
False
>>> print(acl_commands(Settings(), {"feeder": "User:gx-platform"})[0])
kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config admin.properties --add --allow-principal User:gx-platform --operation Write --operation Describe --topic fundwatch.settlements
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

ROLES = ("worker", "feeder", "auditor", "alert_reader")
#: The read side of anything: a fetch and the metadata and offsets it needs.
READ = ("Read", "Describe")


@dataclass(frozen=True)
class Grant:
    """Operations on a resource: a topic or group by its name (``literal``) or by
    the start of its name (``prefixed``)."""
    resource: str  # "topic" or "group"
    name: str
    pattern: str  # "literal" or "prefixed"
    operations: tuple[str, ...]

    def matches(self, resource: str, name: str) -> bool:
        if resource != self.resource:
            return False
        return name.startswith(self.name) if self.pattern == "prefixed" else name == self.name


def grants(settings, role: str) -> list[Grant]:
    """What ``role`` (one of ``ROLES``) may do, for these settings' topic names,
    app id and so consumer group."""
    from infra.config import TOPICS

    topic = settings.topic
    inputs = [topic("settlements"), topic("contributions")]
    app = settings.app_id
    if role == "worker":
        own = [topic(name) for name in TOPICS if topic(name) not in inputs]
        return ([Grant("topic", t, "literal", READ + ("Create",)) for t in inputs]
                + [Grant("topic", t, "literal", READ + ("Write", "Create")) for t in own]
                # The tables' changelogs and Faust's assignor topic, made as needed.
                + [Grant("topic", f"{app}-", "prefixed", READ + ("Write", "Create")),
                   Grant("group", app, "literal", READ)])
    if role == "feeder":
        return [Grant("topic", t, "literal", ("Write", "Describe")) for t in inputs]
    if role == "auditor":
        return ([Grant("topic", t, "literal", READ) for t in inputs]
                + [Grant("topic", f"{app}-", "prefixed", READ),
                   Grant("group", f"{app}-replay-", "prefixed", ("Describe",))])
    if role == "alert_reader":
        return [Grant("topic", topic("alerts"), "literal", READ),
                Grant("group", f"{app}-alerts-", "prefixed", READ)]
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def allows(role_grants: list[Grant], resource: str, name: str, operation: str) -> bool:
    """Whether one of ``role_grants`` lets ``operation`` on that topic or group."""
    return any(g.matches(resource, name) and operation in g.operations for g in role_grants)


def acl_commands(settings, principals: dict[str, str]) -> list[str]:
    """``kafka-acls.sh`` commands adding the grants of each role to its principal
    (role → ``User:name``), for an administrator to run against the cluster."""
    commands = []
    for role, principal in principals.items():
        if not principal.startswith("User:"):
            raise ValueError(f"principal {principal!r} for {role}: Kafka names users "
                             f"'User:<name>'")
        for grant in grants(settings, role):
            words = ["kafka-acls.sh", "--bootstrap-server", '"$BOOTSTRAP"',
                     "--command-config", "admin.properties", "--add",
                     "--allow-principal", principal]
            for operation in grant.operations:
                words += ["--operation", operation]
            words += [f"--{grant.resource}", grant.name]
            if grant.pattern == "prefixed":
                words += ["--resource-pattern-type", "prefixed"]
            commands.append(" ".join(w if w.startswith('"') else shlex.quote(w)
                                     for w in words))
    return commands
