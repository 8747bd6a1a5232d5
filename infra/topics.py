"""What each of fundwatch's topics keeps, and for how long, on a real cluster.

``ensure_topics`` creates the topics with these settings; an operator who creates
them by hand should give them the same.
Faust creates the tables' changelog topics itself, compacted (``cleanup.policy=
compact``): a table is rebuilt from the latest value of each key, so they must never
be given a time retention.

>>> from infra.config import Settings
>>> configs = topic_configs(Settings())
>>> configs["fundwatch.settlements"]["retention.ms"] == str(30 * DAY_MS)
True
>>> configs["fundwatch.alerts"]["cleanup.policy"]
'compact'
>>> sorted(configs) == sorted(Settings().all_topics())
True
>>> configs["fundwatch.deadletter"]["max.message.bytes"]
'4194304'
"""
from __future__ import annotations

DAY_MS = 86_400_000

#: The largest message a worker writes, and what the topics that carry one take
#: (``max.message.bytes``; a broker's default is about 1 MB): a dead letter carries
#: its record whole in base64 (``streams.deadletter``), and an admission hop
#: message a record's text beside its canonical form — a record of 1 MB, as large
#: as an input topic takes by default, makes either larger than that.
MAX_MESSAGE_BYTES = 4 << 20
LARGE_MESSAGE_TOPICS = ("deadletter", "admit", "detect")

#: Days each topic keeps its records (by the broker's append time).
RETENTION_DAYS = {
    # The input, kept long enough for an auditor's `replay --kafka` of the last month
    # and for a worker's restart after a long outage; the provinces keep the originals.
    "settlements": 30,
    "contributions": 30,
    # Dead letters wait for someone to repair and re-send them.
    "deadletter": 90,
    # What the models scored, for monitoring their quality outside the program.
    "scores": 30,
    # The internal hops: a record waits here only until the next stage has read it;
    # a week covers a worker down over a long holiday.
    "admit": 7,
    "detect": 7,
    "metrics": 1,
}


def topic_configs(settings) -> dict[str, dict[str, str]]:
    """Topic name → its broker settings (Kafka's names, string values)."""
    from infra.config import TOPICS

    configs = {}
    for name in TOPICS:
        topic = settings.topic(name)
        if name == "alerts":
            # Keyed by alert_id: compaction keeps each alert's latest revision for
            # ever, and every revision for a week first (the sink and any other
            # consumer see them all).
            configs[topic] = {"cleanup.policy": "compact",
                              "min.compaction.lag.ms": str(7 * DAY_MS)}
        else:
            configs[topic] = {"cleanup.policy": "delete",
                              "retention.ms": str(RETENTION_DAYS[name] * DAY_MS)}
        if name in LARGE_MESSAGE_TOPICS:
            configs[topic]["max.message.bytes"] = str(MAX_MESSAGE_BYTES)
    return configs
