"""The auditor's replay report: one self-contained HTML file.

It opens with no server and no internet (styles and charts are inline, there is no
script) and can be handed on as it is: what was replayed (files with their SHA-256,
the registry, the period), with which software and parameters, what was rejected
and why, the alerts per rule and region, each alert with its evidence laid out for
a person and the settlements to pull, every pool's balance timeline with the
warning bands drawn, and the surge chart of each flagged institution.

Two replays of the same input give byte-identical reports: nothing here reads the
clock, the host or the order of a set.

>>> from streams.offline import OfflinePipeline
>>> from rules.core import DetectionCore
>>> html = render_report(ReplayFacts(OfflinePipeline(DetectionCore([])), lines=0, alerts=[],
...                                  provenance=Provenance(version="0.1.0")))
>>> html.startswith("<!DOCTYPE html>") and "no alert" in html and "<script" not in html
True
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from fractions import Fraction
from html import escape
from typing import Any, Mapping

from sinks.balances import DailyBalances, books_in, pool_lines, with_registry_pools
from sinks.charts import STYLE, Band, Bar, Mark, Rule, bar_chart, line_chart
from streams.records import fen_to_yuan_str

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
MAX_LIST_ROWS = 40  # rows of a list in an alert's evidence before "… n more"
MAX_SURGE_CHARTS = 60
MAX_POOL_CHARTS = 80


@dataclass
class Provenance:
    """What produced the report: enough to run it again and get the same bytes."""

    version: str
    command: str = ""
    inputs: list[dict] = field(default_factory=list)  # {"source", "sha256", "records"}
    registry: dict | None = None  # {"path", "sha256"}
    period: tuple[str | None, str | None] | None = None
    lateness_s: int | None = None
    config_path: str | None = None


@dataclass
class ReplayFacts:
    pipeline: Any  # streams.offline.OfflinePipeline after the replay
    lines: int
    alerts: list[dict]
    provenance: Provenance
    registry: Any = None
    timeline: DailyBalances | None = None
    outside_period: int = 0


def render_report(facts: ReplayFacts) -> str:
    rules = {r.rule_id: r for r in facts.pipeline.core.rules}
    alerts = sorted(facts.alerts, key=lambda a: (SEVERITY_RANK.get(a["severity"], 9),
                                                 a["detected_at"], a["alert_id"]))
    books = with_registry_pools(books_in(facts.pipeline.state), facts.registry)
    sections = [
        _provenance(facts),
        _processing(facts),
        _counts(alerts),
        _pools(books, facts, rules, alerts),
        _surges(alerts),
        _alert_table(alerts),
        _parameters(facts, rules),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>fundwatch replay report</title><style>{PAGE_STYLE}{STYLE}</style>"
            "</head><body>\n<h1>fundwatch replay report <small>医保基金风险预警 · 回放审计"
            "</small></h1>\n" + _contents() + "\n".join(sections) + "\n</body></html>\n")


def _contents() -> str:
    items = [("made", "How it was made"), ("processing", "Records"),
             ("counts", "Alerts per rule and region"), ("pools", "Pools"),
             ("surges", "Cross-province surges"), ("alerts", "Every alert"),
             ("parameters", "Rule parameters")]
    return ('<nav>' + " · ".join(f'<a href="#{i}">{escape(t)}</a>' for i, t in items)
            + '</nav>\n')


# --------------------------------------------------------------------------- sections


def _provenance(facts: ReplayFacts) -> str:
    p = facts.provenance
    rows = [("software", f"fundwatch {p.version}")]
    if p.command:
        rows.append(("command", f"<code>{escape(p.command)}</code>"))
    for item in p.inputs:
        rows.append(("input", f"<code>{escape(item['source'])}</code> — "
                              f"{item['records']:,} lines, SHA-256 <code>"
                              f"{escape(item.get('sha256') or '-')}</code>"))
    if p.registry:
        rows.append(("pool registry", f"<code>{escape(p.registry['path'])}</code>, SHA-256 "
                                      f"<code>{escape(p.registry['sha256'])}</code>"))
    else:
        rows.append(("pool registry", "none (pool balances start from zero; the pool "
                                      "rules judge registered pools only)"))
    if p.config_path:
        rows.append(("config file", f"<code>{escape(p.config_path)}</code>"))
    if p.period and any(p.period):
        start, end = p.period
        rows.append(("period", f"records with event time from {escape(start or 'the start')} "
                               f"to before {escape(end or 'the end')}; "
                               f"{facts.outside_period:,} outside it were not fed"))
    span = _event_span(facts)
    if span:
        rows.append(("event time covered", f"{span[0]} to {span[1]} (Asia/Shanghai)"))
    if p.lateness_s is not None:
        rows.append(("allowed lateness", f"{p.lateness_s:,} s — a day is judged once the "
                                         "stream is that far past its end"))
    retention = getattr(facts.pipeline, "retention_days", None)
    if retention:
        rows.append(("ledger window", (f"{retention:,} days — a record further behind "
                                       "the watermark is rejected as beyond_retention")))
    return _section("made", "How it was made", _kv(rows) + (
        "<p class=\"note\">Run the command again on the same files, registry and "
        "configuration: the alerts, balances and this report come out byte-identical.</p>"))


def _event_span(facts: ReplayFacts) -> tuple[str, str] | None:
    days = [d for series in (facts.timeline.pools.values() if facts.timeline else [])
            for d in (min(series), max(series)) if series]
    return (min(days), max(days)) if days else None


def _processing(facts: ReplayFacts) -> str:
    p = facts.pipeline
    late = sum(book.get("late", 0) for book in books_in(p.state).values())
    rows = [("records read", f"{facts.lines:,}"),
            ("processed", f"{p.counts['accepted']:,}"),
            ("duplicates (changed nothing)", f"{p.counts['duplicate']:,}"),
            ("rejected", f"{p.counts['rejected']:,}")]
    if facts.outside_period:
        rows.append(("outside the period", f"{facts.outside_period:,}"))
    if late:
        rows.append(("late (after their day was judged; counted in the balances)",
                     f"{late:,}"))
    if p.counts["rule_failed"]:
        failed = Counter(r["message"] for letter in p.deadletters for r in letter["reasons"]
                         if r["code"] == "rule_failed")
        rows.append(("rule failures (the records were processed; a rule raised on them)",
                     f"{p.counts['rule_failed']:,}: " + escape("; ".join(
                         f"{n} × {message}" for message, n in failed.most_common(5)))))
    body = _kv(rows)
    if p.reasons:
        where: dict[str, list[str]] = defaultdict(list)
        for letter in p.deadletters:
            source = letter["source"]
            ref = f"{source['topic']}:{source['offset']}" if source["topic"] else "-"
            for reason in letter["reasons"]:
                if len(where[reason["code"]]) < 5:
                    where[reason["code"]].append(ref)
        body += "<h3>Rejected, by reason</h3>" + _table(
            ["reason", "records", "first lines"],
            [[f"<code>{escape(code)}</code>", f"{n:,}",
              escape(", ".join(where.get(code, [])))]
             for code, n in sorted(p.reasons.items(), key=lambda kv: (-kv[1], kv[0]))])
    return _section("processing", "Records", body)


def _counts(alerts: list[dict]) -> str:
    if not alerts:
        return _section("counts", "Alerts per rule and region", "<p>no alert</p>")
    by_rule = Counter(a["rule_id"] for a in alerts)
    severity = defaultdict(Counter)
    for a in alerts:
        severity[a["rule_id"]][a["severity"]] += 1
    rules = sorted(by_rule)
    rule_rows = [[f"<code>{escape(r)}</code>", f"{by_rule[r]:,}",
                  *(f"{severity[r][s]:,}" if severity[r][s] else "" for s in SEVERITY_RANK)]
                 for r in rules]
    per_region = defaultdict(Counter)
    for a in alerts:
        for region in a["regions"]:
            per_region[region][a["rule_id"]] += 1
    region_rows = [[escape(region), f"{sum(per_region[region].values()):,}",
                    *(f"{per_region[region][r]:,}" if per_region[region][r] else ""
                      for r in rules)]
                   for region in sorted(per_region)]
    body = (_table(["rule", "alerts", *SEVERITY_RANK], rule_rows)
            + "<h3>Per region</h3><p class=\"note\">An alert counts for every region it "
              "names: a joint review for each side, a provincial finding for the capital "
              "too.</p>"
            + _table(["region", "alerts", *(f"<code>{escape(r)}</code>" for r in rules)],
                     region_rows, raw_header=True))
    return _section("counts", "Alerts per rule and region", body)


def _pools(books, facts: ReplayFacts, rules, alerts: list[dict]) -> str:
    if not books:
        return _section("pools", "Pools", "<p>no pool in the stream or the registry</p>")
    balance_rule = rules.get("pool_balance_low")
    lines = pool_lines(books, facts.registry, balance_rule, rules.get("pool_expenditure_surge"))
    table = _table(
        ["pool", "name", "balance (¥)", "month", "income (¥)", "expenditure (¥)",
         "vs trend", "months of payment", "band"],
        [[f'<a href="#pool-{escape(line.pool)}">{escape(line.pool)}</a>'
          if line.pool in _flagged_pools(alerts) else escape(line.pool),
          escape(line.name), _num(fen_to_yuan_str(line.balance)), line.month,
          _num(fen_to_yuan_str(line.month_income)), _num(fen_to_yuan_str(line.month_expenditure)),
          "-" if line.vs_trend is None else f"{line.vs_trend:+.0%}",
          "-" if line.months_of_payment is None else f"{float(line.months_of_payment):.2f}",
          f'<span class="sev {escape(line.band)}">{escape(line.band)}</span>']
         for line in lines])
    body = ("<p class=\"note\">As of the newest month (running). Months of payment: the "
            "balance ÷ the mean monthly expenditure of the trailing 12 complete months "
            "with settlements. The contract's balances file (<code>--balances-out</code>) "
            "has every pool-month.</p>" + table)
    flagged = sorted(_flagged_pools(alerts))
    if flagged:
        body += "<h3>Flagged pools: timelines</h3>"
        for pool in flagged[:MAX_POOL_CHARTS]:
            body += _pool_charts(pool, books.get(pool), facts, balance_rule, alerts)
        if len(flagged) > MAX_POOL_CHARTS:
            body += f"<p>… {len(flagged) - MAX_POOL_CHARTS} more flagged pools, not drawn</p>"
    views = _provincial(books, facts.registry)
    if views:
        body += "<h3>The provincial layer</h3><pre>" + escape("\n".join(views)) + "</pre>"
    return _section("pools", "Pools", body)


def _flagged_pools(alerts: list[dict]) -> set[str]:
    return {a["subject"]["id"] for a in alerts if a["subject"]["kind"] == "pool"}


def _provincial(books, registry) -> list[str]:
    if registry is None or not getattr(registry, "provinces", None):
        return []
    from rules.provincial import provincial_positions, render_positions

    return render_positions(provincial_positions(registry, books))


def _pool_charts(pool: str, book, facts: ReplayFacts, rule, alerts) -> str:
    region = pool.split(":")[0]
    own = [a for a in alerts if a["subject"]["id"] == pool]
    items = "".join(f"<li>{_sev(a)} <code>{escape(a['rule_id'])}</code> "
                    f"<a href=\"#{escape(a['alert_id'])}\">{escape(a['summary'])}</a></li>"
                    for a in own)
    out = (f'<div class="pool" id="pool-{escape(pool)}"><h4>{escape(pool)}</h4><ul>{items}</ul>'
           '<div class="charts">')
    series = (facts.timeline.pools.get(pool, {}) if facts.timeline else {})
    if series:
        days = _all_days(min(series), max(series))
        marks = [Mark(a["window"]["start"][:10], a["rule_id"]) for a in own]
        mop = [(d, float(series[d][1]) if d in series and series[d][1] is not None else None)
               for d in days]
        if any(v is not None for _, v in mop):
            out += line_chart(mop, title="months of payment (可支付月数), daily, with the "
                                         "warning bands", bands=_bands(rule, region[:2]),
                              marks=marks)
        out += line_chart([(d, series[d][0] / 100 if d in series else None) for d in days],
                          title="accumulated balance (¥), daily", marks=marks,
                          floor_zero=False)
    if book and book.get("months"):
        months = sorted(book["months"])
        bars = []
        for m in months:
            bars.append(Bar(f"{m[2:]} in", book["months"][m]["i"] / 100, "income"))
            bars.append(Bar(f"{m[2:]} out", book["months"][m]["e"] / 100, "expenditure"))
        out += bar_chart(bars, title="monthly income (green) and expenditure (red), ¥")
    return out + "</div></div>"


def _bands(rule, province: str) -> list[Band]:
    def value(name: str, default: float) -> float:
        return float(rule.param(name, province)) if rule is not None else default

    bands = [Band(None, value("critical_months", 3.0), "critical"),
             Band(value("critical_months", 3.0), value("warning_months", 6.0), "warning")]
    surplus = value("surplus_months", 12.0)
    if surplus:
        bands.append(Band(surplus, None, "surplus"))
    return bands


def _all_days(first: str, last: str) -> list[str]:
    day, end, out = date.fromisoformat(first), date.fromisoformat(last), []
    while day <= end:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


def _surges(alerts: list[dict]) -> str:
    surges = [a for a in alerts if a["rule_id"] == "cross_province_surge"]
    if not surges:
        return _section("surges", "Cross-province surges", "<p>no surge flagged</p>")
    body = ("<p class=\"note\">Each flagged institution's cross-province cost in the four "
            "baseline weeks and the current week; the dashed lines are the threshold and "
            "the critical threshold over the baseline mean.</p>")
    for a in sorted(surges, key=lambda a: (a["subject"]["id"], a["window"]["start"]))[
            :MAX_SURGE_CHARTS]:
        ev = a["evidence"]
        base = float(ev["baseline"])
        bars = [Bar(w["start"][5:10], float(w["amount"]), "base")
                for w in sorted(ev.get("baseline_windows", []), key=lambda w: w["start"])]
        bars.append(Bar(ev["current_window"]["start"][5:10] + " now", float(ev["current"]),
                        "current"))
        lines = [Rule(base * (1 + ev["threshold"]), f"+{ev['threshold']:.0%}"),
                 Rule(base * (1 + ev["critical_threshold"]),
                      f"+{ev['critical_threshold']:.0%} critical")]
        body += (f'<div class="surge"><h4>{escape(a["subject"]["id"])} {_sev(a)} '
                 f'<a href="#{escape(a["alert_id"])}">{escape(a["alert_id"])}</a></h4>'
                 + bar_chart(bars, title=f"cross-province {ev['measure']} per 7 days (¥), "
                                         f"{ev['growth']:+.0%} on the baseline",
                             lines=lines) + "</div>")
    if len(surges) > MAX_SURGE_CHARTS:
        body += f"<p>… {len(surges) - MAX_SURGE_CHARTS} more, in the alert table</p>"
    return _section("surges", "Cross-province surges", body)


def _alert_table(alerts: list[dict]) -> str:
    if not alerts:
        return _section("alerts", "Every alert", "<p>no alert</p>")
    rows = []
    for a in alerts:
        duties = "".join(f"<li><b>{escape(region)}</b>: {escape(duty)}</li>"
                         for region, duty in (a.get("duties") or {}).items())
        pulls = a.get("settlement_ids") or []
        if a.get("review") == "joint" and duties:
            duties = f"<p><b>Joint review</b> — each side's duty:</p><ul>{duties}</ul>"
        elif duties:
            duties = f"<ul>{duties}</ul>"
        detail = (duties
                  + f"<p><b>Window</b> {escape(a['window']['start'])} to "
                    f"{escape(a['window']['end'])}; detected at {escape(a['detected_at'])}</p>"
                  + "<p><b>Evidence</b></p>" + _value(a["evidence"])
                  + (f"<p><b>Settlements to pull</b> ({len(pulls)})</p><p class=\"ids\">"
                     + escape(", ".join(pulls)) + "</p>" if pulls else ""))
        rows.append(
            f'<tr id="{escape(a["alert_id"])}"><td>{_sev(a)}</td>'
            f'<td><code>{escape(a["rule_id"])}</code></td>'
            f'<td>{escape(a["subject"]["kind"])} <code>{escape(a["subject"]["id"])}</code></td>'
            f'<td>{escape(", ".join(a["regions"]))}</td>'
            f'<td>{escape(a["window"]["start"][:10])}</td>'
            f'<td><details><summary>{escape(a["summary"])}</summary>{detail}'
            f'<p class="id">{escape(a["alert_id"])}</p></details></td></tr>')
    body = ("<p class=\"note\">Most severe first, then by when detected. Open a row for "
            "its evidence, its duties and the settlements to pull.</p>"
            "<table class=\"alerts\"><thead><tr><th>severity</th><th>rule</th>"
            "<th>subject</th><th>regions</th><th>from</th><th>finding</th></tr></thead>"
            "<tbody>" + "".join(rows) + "</tbody></table>")
    return _section("alerts", f"Every alert ({len(alerts):,})", body)


def _parameters(facts: ReplayFacts, rules: Mapping[str, Any]) -> str:
    rows = []
    for rule_id in sorted(rules):
        rule = rules[rule_id]
        for name, param in rule.params.items():
            value = rule.p[name]
            changed = value != param.default
            rows.append([f"<code>{escape(rule_id)}</code>", f"<code>{escape(name)}</code>",
                         ("<b>" if changed else "") + escape(repr(value))
                         + ("</b>" if changed else ""),
                         escape(repr(param.default)),
                         escape(", ".join(f"{prov}: {values[name]!r}" for prov, values
                                          in sorted(rule._by_province.items())
                                          if values[name] != value))])
    body = ("<p class=\"note\">Every rule that ran, with the values it ran with (bold where "
            "the configuration changed the default) and per-province overrides.</p>"
            + _table(["rule", "parameter", "value", "default", "per province"], rows))
    return _section("parameters", "Rule parameters", body)


# --------------------------------------------------------------------------- HTML bits


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _kv(rows: list[tuple[str, str]]) -> str:
    return ('<table class="kv">' + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>"
                                           for k, v in rows) + "</table>")


def _table(header: list[str], rows: list[list[str]], raw_header: bool = True) -> str:
    head = "".join(f"<th>{h if raw_header else escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="wide">{table}</div>' if len(header) > 8 else table


def _sev(alert: dict) -> str:
    return f'<span class="sev {escape(alert["severity"])}">{escape(alert["severity"])}</span>'


def _num(text: str) -> str:
    return f'<span class="n">{escape(text)}</span>'


def _value(value: Any) -> str:
    """Evidence as a person reads it: objects as key/value tables, lists of objects
    as tables, lists of plain values inline."""
    if isinstance(value, dict):
        if not value:
            return "<i>none</i>"
        return ('<table class="kv">' + "".join(
            f"<tr><th>{escape(str(k))}</th><td>{_value(v)}</td></tr>"
            for k, v in value.items()) + "</table>")
    if isinstance(value, list):
        if not value:
            return "<i>none</i>"
        if all(isinstance(v, dict) for v in value):
            keys: list[str] = []
            for v in value:
                keys += [k for k in v if k not in keys]
            shown = value[:MAX_LIST_ROWS]
            more = (f"<p>… {len(value) - MAX_LIST_ROWS} more</p>"
                    if len(value) > MAX_LIST_ROWS else "")
            return _table([escape(k) for k in keys],
                          [[_value(v.get(k, "")) for k in keys] for v in shown]) + more
        return escape(", ".join(_scalar(v) for v in value))
    return escape(_scalar(value))


def _scalar(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Fraction):
        return f"{float(value):.2f}"
    return str(value)


PAGE_STYLE = """
body{font:14px/1.45 -apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
 margin:24px auto;max-width:1100px;padding:0 16px;color:#1d1d1d}
h1{font-size:22px;margin-bottom:4px}h1 small{font-size:14px;color:#666;font-weight:normal}
h2{font-size:18px;border-bottom:2px solid #1f4e8c;padding-bottom:3px;margin-top:32px}
h3{font-size:15px;margin-top:20px}h4{margin:14px 0 4px}
nav{margin:6px 0 10px;color:#666}nav a{color:#1f4e8c}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:#f1f4f8}
table.kv th{background:#f7f7f7;font-weight:600;white-space:nowrap}
table.alerts{width:100%}table.alerts td:nth-child(6){width:60%}
td .n,.n{font-variant-numeric:tabular-nums}
.sev{padding:1px 6px;border-radius:3px;font-size:12px;white-space:nowrap}
.sev.critical{background:#b00020;color:#fff}.sev.warning{background:#f0a202;color:#000}
.sev.info,.sev.surplus{background:#cfe2f3;color:#000}.sev.ok{background:#e6f2e6}
details summary{cursor:pointer}
.note{color:#555;font-size:13px}.ids{font:12px monospace;word-break:break-all}
.id{font:11px monospace;color:#888}
code{font-size:12px}
.pool,.surge{border-top:1px solid #eee;padding-top:6px;margin-top:10px}
svg{display:block;max-width:100%;height:auto;margin:4px 0}
.charts{display:flex;flex-wrap:wrap;gap:4px 16px}.charts svg{width:520px}
.wide{overflow-x:auto}
@media print{details{display:block}details>summary{list-style:none}}
"""
