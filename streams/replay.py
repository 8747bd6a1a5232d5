"""``fundwatch replay``: a historical stream through the live detectors, offline.

The auditor's path: the same stages and the same rules as a live worker
(``streams.offline``), over files instead of topics, with no broker. The input is
taken as complete, so once it is read every day up to the newest record's day is
closed and judged (``--live-watermark`` stops at the live watermark instead, to
compare with a worker that is still running). Two replays of the same input write
byte-identical files.
"""
from __future__ import annotations

import gzip
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

import orjson

from rules.core import DetectionCore, load_rules
from rules.pools import PoolBook
from sinks.balances import balance_rows, books_in, with_registry_pools, write_balances_csv
from streams.offline import OfflinePipeline


def read_lines(path: str | Path) -> Iterator[bytes]:
    """The lines of a JSONL file, gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        yield from lines


def replay_pipeline(settings, registry, lateness_s: int | None = None) -> OfflinePipeline:
    """An offline pipeline with every configured rule, whose pool books keep every
    month (the balances file lists them all; live workers keep two years)."""
    core = DetectionCore(load_rules(settings.rules, registry=registry,
                                    source=settings.config_path),
                         books=[PoolBook(registry, keep_months=None)])
    return OfflinePipeline(core, lateness_s=(settings.allowed_lateness_s if lateness_s is None
                                             else lateness_s))


@dataclass
class ReplayResult:
    pipeline: OfflinePipeline
    lines: int
    alerts: list[dict]


def replay(paths: list[str], settings, registry, *, close_input: bool = True,
           report: TextIO | None = None) -> ReplayResult:
    report = report or sys.stderr
    pipeline = replay_pipeline(settings, registry)
    lines = 0
    for path in paths:
        for number, line in enumerate(read_lines(path), 1):
            if not line.strip():
                continue
            lines += 1
            outcome = pipeline.feed(line, source=f"{path}:{number}", topic=str(path),
                                    offset=number)
            if outcome == "rejected":
                reasons = pipeline.deadletters[-1]["reasons"]
                print(f"{path}:{number}\t{','.join(r['code'] for r in reasons)}\t"
                      f"{reasons[0]['message']}", file=report)
    if close_input:
        pipeline.close_input()
    alerts = sorted(pipeline.alerts.values(), key=lambda a: (a["detected_at"], a["alert_id"]))
    return ReplayResult(pipeline, lines, alerts)


def write_alerts(alerts: list[dict], path: str | Path) -> None:
    with open(path, "wb") as out:
        for alert in alerts:
            out.write(orjson.dumps(alert) + b"\n")


def write_balances(result: ReplayResult, registry, path: str | Path) -> int:
    books = with_registry_pools(books_in(result.pipeline.state), registry)
    return write_balances_csv(balance_rows(books), path)


def summary_lines(result: ReplayResult) -> list[str]:
    p = result.pipeline
    out = [f"{result.lines} records: {p.counts['accepted']} processed, "
           f"{p.counts['duplicate']} duplicates, {p.counts['rejected']} rejected"]
    if p.reasons:
        out.append("rejected by reason: " + ", ".join(f"{code} {n}" for code, n in
                                                       sorted(p.reasons.items())))
    if p.counts["rule_failed"]:
        out.append(f"rule failures (dead-lettered): {p.counts['rule_failed']}")
    late = sum(book.get("late", 0) for book in books_in(p.state).values())
    if late:
        out.append(f"late records (after their day was judged; counted in the balances): "
                   f"{late}")
    by_rule = Counter(a["rule_id"] for a in result.alerts)
    out.append(f"{len(result.alerts)} alerts" + (": " + ", ".join(
        f"{rule} {n}" for rule, n in sorted(by_rule.items())) if by_rule else ""))
    return out
