"""The auditor's replay: the HTML report (self-contained, complete, byte-identical on a
re-run), the period (--from/--to gives what a file cut to the period gives), the
CSV/Parquet exports (exact money), the progress line (only on a terminal), and
replay from Kafka through a fresh consumer group that leaves live consumers'
offsets alone."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from datetime import datetime
from decimal import Decimal
from html import escape

import pandas as pd
import pytest

from rules.alerts import SHANGHAI
from streams.cli import main
from streams.records import Rejected, parse
from streams.replay import Period, Progress
from streams.simulate import simulate, write
from streams.watermark import event_ms


@pytest.fixture(scope="module")
def province(tmp_path_factory):
    """A province of 125 days (the simulator's surge, siphon and pool warnings all
    happen in it), small in volume."""
    out = tmp_path_factory.mktemp("report")
    sim = simulate(days=125, seed=5, scale=0.04)
    paths = write(sim, out / "province.jsonl")
    return {"dir": out, "events": paths["events"], "pools": paths["pools"],
            "lines": list(sim.events)}


def run_replay(province, name: str, *extra, events=None) -> dict:
    d = province["dir"]
    argv = ["replay", str(events or province["events"]), "--pools", str(province["pools"]),
            "--alerts-out", str(d / f"{name}.alerts.jsonl"),
            "--balances-out", str(d / f"{name}.balances.csv"), *extra]
    assert main(argv) == 0
    return {"alerts": (d / f"{name}.alerts.jsonl").read_bytes(),
            "balances": (d / f"{name}.balances.csv").read_bytes()}


@pytest.fixture(scope="module")
def report(province):
    first = province["dir"] / "first.html"
    outputs = run_replay(province, "first", *report_args(province))
    alerts = [json.loads(line) for line in outputs["alerts"].splitlines()]
    return {"html": first.read_text(encoding="utf-8"), "path": first, "alerts": alerts,
            "outputs": outputs}


def report_args(province) -> list[str]:
    return ["--report", str(province["dir"] / "first.html"),
            "--export", str(province["dir"] / "export")]


def test_the_report_is_self_contained(report):
    html = report["html"]
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # Opens with no server and no internet: nothing to fetch, nothing to run.
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "url(" not in html and "@import" not in html


def test_the_report_holds_every_alert_with_its_evidence(report):
    html = report["html"]
    alerts = report["alerts"]
    rules = {a["rule_id"] for a in alerts}
    assert {"cross_province_surge", "siphon_shift", "pool_balance_low"} <= rules
    for a in alerts:
        assert f'<tr id="{a["alert_id"]}">' in html  # each alert has its row and anchor
    surge = next(a for a in alerts if a["rule_id"] == "cross_province_surge")
    row = html.split(f'<tr id="{surge["alert_id"]}">')[1].split('<tr id="')[0]
    assert surge["evidence"]["baseline"] in row and surge["evidence"]["current"] in row
    for region, duty in surge["duties"].items():
        assert f"<b>{region}</b>: {escape(duty)}" in row  # each side of the joint review
    assert surge["settlement_ids"][0] in row
    # The counts per rule add up to the alerts.
    counts = html.split('<section id="counts">')[1].split("</section>")[0]
    for rule in rules:
        n = sum(a["rule_id"] == rule for a in alerts)
        assert f"<td><code>{rule}</code></td><td>{n:,}</td>" in counts


def test_the_report_draws_pool_timelines_with_bands_and_surge_charts(report):
    html = report["html"]
    alerts = report["alerts"]
    pools = sorted({a["subject"]["id"] for a in alerts if a["subject"]["kind"] == "pool"})
    pool_part = html.split('<section id="pools">')[1].split("</section>")[0]
    for pool in pools:
        block = pool_part.split(f'<div class="pool" id="pool-{pool}">')[1].split("</div>")[0]
        assert "months of payment" in block and 'class="band critical"' in block
        assert "accumulated balance" in block and "<path" in block
    surges = [a for a in alerts if a["rule_id"] == "cross_province_surge"]
    surge_part = html.split('<section id="surges">')[1].split("</section>")[0]
    assert surge_part.count('<div class="surge">') == len(surges) >= 1
    assert surge_part.count('class="b current"') == len(surges)
    # Provenance: the software, the input's hash, the registry, the parameters.
    from importlib.metadata import version

    made = html.split('<section id="made">')[1].split("</section>")[0]
    assert f"fundwatch {version('fundwatch')}" in made
    import hashlib

    assert hashlib.sha256(report_input(report).read_bytes()).hexdigest() in made
    assert "<th>ledger window</th><td>400 days" in made
    params = html.split('<section id="parameters">')[1]
    assert "<code>cross_province_surge</code></td><td><code>threshold</code></td><td>0.2" \
        in params


def report_input(report):
    return report["path"].parent / "province.jsonl"


def test_a_second_replay_writes_the_same_bytes(province, report):
    """The same command again (the report names it, so it must be the same): the
    alerts, the balances and the report byte for byte."""
    second = run_replay(province, "first", *report_args(province))
    assert report["path"].read_text(encoding="utf-8") == report["html"]
    assert second == report["outputs"]


def test_exports_hold_the_alerts_and_the_balances_exactly(province, report):
    export = province["dir"] / "export"
    alerts = pd.read_parquet(export / "alerts.parquet")
    assert list(alerts["alert_id"]) == [a["alert_id"] for a in report["alerts"]]
    assert json.loads(alerts.loc[0, "evidence"]) == report["alerts"][0]["evidence"]
    assert len(pd.read_csv(export / "alerts.csv")) == len(report["alerts"])
    with open(province["dir"] / "first.balances.csv", newline="") as f:
        contract = list(csv.DictReader(f))
    parquet = pd.read_parquet(export / "balances.parquet")
    assert len(parquet) == len(contract)
    for row, (_, exported) in zip(contract, parquet.iterrows()):
        assert exported["income"] == Decimal(row["income"])  # decimal, not a float
        assert exported["balance_end"] == Decimal(row["balance_end"])
    assert (export / "balances.csv").read_text().splitlines()[1:] == \
        (province["dir"] / "first.balances.csv").read_text().splitlines()[1:]


def test_a_period_gives_what_a_file_cut_to_the_period_gives(province, capsys):
    start = int(datetime(2025, 3, 20, tzinfo=SHANGHAI).timestamp() * 1000)
    end = int(datetime(2025, 6, 1, tzinfo=SHANGHAI).timestamp() * 1000)
    kept, outside = [], 0
    for line in province["lines"]:
        try:
            t = event_ms(parse(line))
        except Rejected:
            kept.append(line)  # unreadable lines are rejected either way
            continue
        if start <= t < end:
            kept.append(line)
        else:
            outside += 1
    cut = province["dir"] / "cut.jsonl"
    cut.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in kept))
    by_file = run_replay(province, "cut", events=cut)
    capsys.readouterr()
    by_period = run_replay(province, "period", "--from", "2025-03-20", "--to", "2025-05-31")
    assert by_period == by_file
    assert f", {outside} outside the period" in capsys.readouterr().out
    assert outside > 0


@pytest.mark.parametrize("start, end, why", [
    ("2025-03-40", None, "is not a date"),
    ("2025-03-01T08:00:00", None, "give the offset"),
    ("2025-05-01", "2025-04-01", "is not after"),
])
def test_a_bad_period_is_refused_with_its_reason(province, capsys, start, end, why):
    argv = ["replay", str(province["events"]), "--alerts-out",
            str(province["dir"] / "bad.jsonl"), "--from", start] + (["--to", end] if end else [])
    assert main(argv) == 2
    assert why in capsys.readouterr().err


def test_period_bounds():
    p = Period.parse("2025-03-01", "2025-03-31")
    midnight = int(datetime(2025, 3, 1, tzinfo=SHANGHAI).timestamp() * 1000)
    assert not p.contains(midnight - 1) and p.contains(midnight)
    end = int(datetime(2025, 4, 1, tzinfo=SHANGHAI).timestamp() * 1000)
    assert p.contains(end - 1) and not p.contains(end)
    assert Period.parse(None, None) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_rate_and_eta_on_a_terminal_only():
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(total_bytes=1000, stream=stream)
        progress.started -= 2.0  # two seconds in
        progress.update(5000, 250)
        progress.finish(20000)
    shown = terminal.getvalue()
    assert re.search(r"5,000 records  [\d,]+/s  25%  ETA 0:0\d", shown), shown
    assert "20,000 records in" in shown
    assert pipe.getvalue() == ""


# ------------------------------------------------------------------------ from Kafka

def deployment(broker, province, monkeypatch):
    """A deployment of its own on the test broker (topics with 3 partitions), named to
    the fundwatch commands by the environment; the province's lines to send to it."""
    from infra.broker import ensure_topics
    from infra.config import Settings

    tag = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"k{tag}.",
                        app_id=f"replay-{tag}", partitions=3)
    ensure_topics(broker.bootstrap_servers, settings)
    for name, value in {"FUNDWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                        "FUNDWATCH_TOPIC_PREFIX": settings.topic_prefix,
                        "FUNDWATCH_APP_ID": settings.app_id}.items():
        monkeypatch.setenv(name, value)
    return settings, [line.rstrip(b"\n") for line in province["lines"] if line.strip()]


@pytest.mark.broker
def test_replay_from_kafka_gives_the_file_replays_alerts(broker, province, tmp_path,
                                                        monkeypatch, capsys):
    """The records produced to the input topics (partitioned as a settlement system
    would send them) replayed from Kafka give the same alerts and balances as the
    file; a live consumer group's committed offsets are untouched, and the replay's
    own group commits nothing."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from streams.live import produce

    settings, lines = deployment(broker, province, monkeypatch)
    asyncio.run(produce(settings, lines))
    topic = settings.topic("settlements")

    async def committed(group: str, commit: int | None = None) -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers,
                                    group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(3)]
            consumer.assign(tps)
            if commit is not None:
                await consumer.commit({tp: OffsetAndMetadata(commit, "") for tp in tps})
            return {tp.partition: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()

    live_group = f"live-{settings.app_id}"
    before = asyncio.run(committed(live_group, commit=5))
    file_run = run_replay(province, "kafka-file")
    capsys.readouterr()
    assert main(["replay", "--kafka", "--pools", str(province["pools"]),
                 "--alerts-out", str(tmp_path / "alerts.jsonl"),
                 "--balances-out", str(tmp_path / "balances.csv")]) == 0
    summary = capsys.readouterr().out
    assert (tmp_path / "alerts.jsonl").read_bytes() == file_run["alerts"]
    assert (tmp_path / "balances.csv").read_bytes() == file_run["balances"]
    assert f"{len(lines)} records" in summary
    assert asyncio.run(committed(live_group)) == before == {0: 5, 1: 5, 2: 5}



async def produce_as_it_happened(settings, lines: list[bytes]) -> None:
    """Each record stamped by the broker with its own event time, as a settlement
    system sending in real time would have produced it."""
    from aiokafka import AIOKafkaProducer

    from streams.live import input_topic

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        stamp = None
        for line in lines:
            try:
                stamp = event_ms(parse(line))
            except Rejected:
                pass  # a broken record: sent "when" the one before it was
            topic, key = input_topic(settings, line)
            await producer.send(topic, line, key=key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.broker
def test_replay_from_kafka_starts_at_the_period_by_timestamp(broker, province, tmp_path,
                                                             monkeypatch, capsys):
    """With --from, the replay asks the broker for each partition's first record
    stamped a day and the lateness before it (offsets for times) and gives the alerts
    of the file replayed for the period. (The embedded broker, Tansu 0.6, answers
    offset 0 to every such question — measured — so here the seek saves nothing;
    what is checked is that the answer is used safely: nothing of the period lost.)"""
    settings, lines = deployment(broker, province, monkeypatch)
    asyncio.run(produce_as_it_happened(settings, lines))
    assert main(["replay", "--kafka", "--pools", str(province["pools"]),
                 "--alerts-out", str(tmp_path / "period.jsonl"),
                 "--from", "2025-05-01", "--to", "2025-05-31"]) == 0
    summary = capsys.readouterr().out
    read = int(summary.split(" records")[0])
    assert read == len(lines) and "outside the period" in summary
    period_file = run_replay(province, "kafka-period", "--from", "2025-05-01",
                             "--to", "2025-05-31")
    assert (tmp_path / "period.jsonl").read_bytes() == period_file["alerts"]
