"""Building alert/v1 records and the event-time windows they cover.

The ``alert_id`` is a hash of what the finding is — rule, subject, window — and
nothing else, so a replay, a retry or a restarted worker always produces the same
id, and the store turns a repeat into an update instead of a second alert.

>>> a = make_alert("unfiled_cross_region", "warning", "institution", "H440100001",
...     regions=["440100"], window=month_window("2025-03"),
...     detected_at="2025-03-09T10:00:00+08:00", summary="6 unfiled stays",
...     evidence={"settlement_count": 6}, settlement_ids=["S1"])
>>> a["alert_id"] == make_alert_id("unfiled_cross_region", "institution", "H440100001",
...     month_window("2025-03"))
True
>>> month_window("2025-03")
{'start': '2025-03-01T00:00:00+08:00', 'end': '2025-04-01T00:00:00+08:00'}
"""
from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
SEVERITIES = ("info", "warning", "critical")
MAX_SETTLEMENT_IDS = 50  # an alert lists at most this many; evidence.settlement_count has all


def make_alert_id(rule_id: str, subject_kind: str, subject_id: str, window: dict) -> str:
    basis = "|".join((rule_id, subject_kind, subject_id, window["start"], window["end"]))
    return "fw-" + hashlib.sha256(basis.encode()).hexdigest()[:24]


def make_alert(rule_id: str, severity: str, subject_kind: str, subject_id: str, *,
               regions: Iterable[str], window: dict, detected_at: str, summary: str,
               evidence: dict[str, Any], settlement_ids: Iterable[str] = (),
               review: str = "single", duties: dict[str, str] | None = None) -> dict[str, Any]:
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
    regions = list(dict.fromkeys(regions))
    if review == "joint" and len(regions) < 2:
        raise ValueError("a joint review needs the regions of both sides")
    ids = sorted(set(settlement_ids))
    evidence = dict(evidence)
    evidence.setdefault("settlement_count", len(ids))
    alert = {
        "schema": "alert/v1",
        "alert_id": make_alert_id(rule_id, subject_kind, subject_id, window),
        "rule_id": rule_id,
        "severity": severity,
        "subject": {"kind": subject_kind, "id": subject_id},
        "regions": regions,
        "review": review,
        "window": dict(window),
        "detected_at": detected_at,
        "summary": summary,
        "evidence": evidence,
        "settlement_ids": ids[:MAX_SETTLEMENT_IDS],
    }
    if duties:
        alert["duties"] = dict(duties)
    return alert


def month_of(moment: datetime) -> str:
    """The calendar month (Asia/Shanghai) an aware datetime falls in, as ``YYYY-MM``.

    >>> month_of(datetime.fromisoformat("2025-05-31T16:00:00+00:00"))
    '2025-06'
    """
    day = shanghai_day(moment)
    if day.year < 1000:  # strftime's %Y does not pad these: keys stay as they were
        return day.strftime("%Y-%m")
    # Formatted from the date, not by strftime: called for every record by several
    # rules and the pool books; 1.4 µs a call so, 3.0 µs through strftime.
    return f"{day.year}-{day.month:02d}"


def day_of(moment: datetime) -> str:
    """The calendar day (Asia/Shanghai) of an aware datetime, ``YYYY-MM-DD``.

    >>> day_of(datetime.fromisoformat("2025-05-31T16:00:00+00:00"))
    '2025-06-01'
    """
    day = shanghai_day(moment)
    if day.year < 1000:  # as month_of
        return day.strftime("%Y-%m-%d")
    return day.isoformat()


def month_window(month: str) -> dict[str, str]:
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=SHANGHAI)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=SHANGHAI)
    return {"start": start.isoformat(), "end": end.isoformat()}


def previous_month(month: str, n: int = 1) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) - n
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def day_window(day: date) -> dict[str, str]:
    return days_window(day, day)


def shanghai_day(moment: datetime) -> date:
    """The calendar day (Asia/Shanghai) an aware moment falls on."""
    return moment.astimezone(SHANGHAI).date()


def day_start(day: date) -> str:
    """Midnight at the start of ``day`` in Asia/Shanghai, as written in alerts."""
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).isoformat()


def days_window(first: date, last: date) -> dict[str, str]:
    """The window from ``first`` 00:00 to the end of ``last`` (Asia/Shanghai).

    >>> days_window(date(2025, 3, 1), date(2025, 3, 7))
    {'start': '2025-03-01T00:00:00+08:00', 'end': '2025-03-08T00:00:00+08:00'}
    """
    return {"start": day_start(first), "end": day_start(last + timedelta(days=1))}


def iso(moment: datetime) -> str:
    """Event times are written in Asia/Shanghai with their offset, to the second."""
    if moment.tzinfo is None:
        raise ValueError("event times must be aware")
    return moment.astimezone(SHANGHAI).isoformat(timespec="seconds")


def utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)
