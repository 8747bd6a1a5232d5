"""pool_expenditure_surge — a month's spending far above the pool's own trend.

Judged once per pool and calendar month, when the month is complete, from the
pool's book (``rules.pools``). Months differ in length, so each month is measured
by its **daily rate** of expenditure (the first month of the stream by the days
it covers).

How "far" is decided:

* the trend: the daily rates of the up to ``trend_months`` (6) calendar months
  before, those with settlements; at least ``min_trend_months`` (3) are needed.
  With four or more, a least-squares line through them projected to the judged
  month (a pool whose spending grows steadily is not flagged for growing); with
  three, their mean;
* the month's **excess** = its rate ÷ the projection − 1, and its **z** = the
  excess ÷ the trend months' relative scatter (the residuals' standard deviation
  ÷ their mean rate, never taken below ``min_relative_sd``, 3%: a very smooth
  history must not make every wobble significant);
* **alert** when the excess is above ``min_excess`` (20%) **and** z is at least
  ``min_z`` (3) — large in money and unusual for this pool; **critical** above
  ``critical_excess`` (50%). One alert per pool and month (window = the month).

>>> from datetime import datetime
>>> from rules.alerts import SHANGHAI
>>> rate = {"2025-01": 100, "2025-02": 100, "2025-03": 100, "2025-04": 160}
>>> days = {"2025-01": 31, "2025-02": 28, "2025-03": 31, "2025-04": 30}
>>> book = {"pool": "440900:resident", "opening": 0, "first": "2025-01-01",
...         "closed": "2025-04-30", "carried": [0, 0], "floor": None, "late": 0, "days": {},
...         "months": {m: {"i": 0, "e": r * days[m], "rev": 0, "out": 0, "in": 0, "s": 5}
...                    for m, r in rate.items()}}
>>> state, fired = PoolExpenditureSurge().close(None, datetime(2025, 5, 1, tzinfo=SHANGHAI),
...                                            book)
>>> fired[0]["severity"], fired[0]["evidence"]["excess"]
('critical', 0.6)
"""
from __future__ import annotations

import calendar
import math
from datetime import date

from rules.alerts import make_alert, month_window, previous_month
from rules.core import Param, Rule
from rules.pools import close_months
from streams.records import fen_to_yuan_str


class PoolExpenditureSurge(Rule):
    rule_id = "pool_expenditure_surge"
    description = "A pool's monthly expenditure rate far above its own trend"
    subject_kind = "pool"
    key_kind = "pool"
    book = "pool_fund"
    params = {
        "trend_months": Param(int, 6, "months before the judged one the trend is taken "
                              "from", minimum=3, maximum=12),
        "min_trend_months": Param(int, 3, "months with settlements the trend needs",
                                  minimum=3, maximum=12),
        "min_excess": Param(float, 0.2, "excess over the trend's projection above which "
                            "an alert may fire", minimum=0.0),
        "critical_excess": Param(float, 0.5, "excess above which the alert is critical",
                                 minimum=0.0),
        "min_z": Param(float, 3.0, "excess in units of the trend's relative scatter the "
                       "month must reach", minimum=0.0),
        "min_relative_sd": Param(float, 0.03, "floor of the trend's relative scatter",
                                 minimum=0.001),
    }

    def close(self, state, midnight, book=None):
        """Judge each calendar month that ended by ``midnight`` and is not judged yet."""
        return close_months(state, midnight, book, lambda month: self._judge(book, month))

    def trend(self, book, month: str) -> dict | None:
        """The month's daily expenditure rate against the pool's own trend (see the
        module doc): ``current``, ``projection``, ``excess``, ``z``, ``slope``,
        ``relative_sd`` and the trend's ``history`` [(offset, month, rate)]; None when
        there is too little history to say. ``fundwatch pools`` shows it too."""
        province = book["pool"][:2]
        current = _rate(book, month)
        if current is None:
            return None
        history = []
        for k in range(self.param("trend_months", province), 0, -1):
            m = previous_month(month, k)
            rate = _rate(book, m)
            if rate is not None:
                history.append((-k, m, rate))
        if len(history) < self.param("min_trend_months", province):
            return None
        xs = [x for x, _, _ in history]
        ys = [y for _, _, y in history]
        mean = sum(ys) / len(ys)
        if len(history) >= 4:
            mx = sum(xs) / len(xs)
            sxx = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - mean) for x, y in zip(xs, ys)) / sxx
            fitted = [mean + slope * (x - mx) for x in xs]
            projection = mean + slope * (0 - mx)
            dof = len(ys) - 2
        else:
            slope, fitted, projection, dof = 0.0, [mean] * len(ys), mean, len(ys) - 1
        if projection <= 0 or mean <= 0:
            return None
        sd = math.sqrt(sum((y - f) ** 2 for y, f in zip(ys, fitted)) / dof)
        relative_sd = max(sd / mean, self.param("min_relative_sd", province))
        excess = current / projection - 1
        return {"current": current, "projection": projection, "excess": excess,
                "z": excess / relative_sd, "slope": slope, "relative_sd": relative_sd,
                "history": history}

    def _judge(self, book, month: str) -> list[dict]:
        pool = book["pool"]
        region = pool.split(":")[0]
        province = region[:2]
        found = self.trend(book, month)
        if found is None:
            return []
        current, projection, excess, z = (found["current"], found["projection"],
                                          found["excess"], found["z"])
        slope, relative_sd, history = found["slope"], found["relative_sd"], found["history"]
        if excess <= self.param("min_excess", province) or z < self.param("min_z", province):
            return []
        severity = "critical" if excess > self.param("critical_excess", province) else "warning"
        entry = book["months"][month]
        return [make_alert(
            self.rule_id, severity, "pool", pool, regions=[region],
            window=month_window(month), detected_at=month_window(month)["end"],
            summary=(f"{pool}: expenditure in {month} ran at ¥{fen_to_yuan_str(round(current))}"
                     f" a day, {excess:+.0%} over the pool's own trend "
                     f"(¥{fen_to_yuan_str(round(projection))} a day projected from "
                     f"{len(history)} months; {z:.1f}× its usual scatter)"),
            evidence={
                "month": month,
                "expenditure": fen_to_yuan_str(entry["e"]),
                "daily_rate": fen_to_yuan_str(round(current)),
                "projected_daily_rate": fen_to_yuan_str(round(projection)),
                "excess": round(excess, 4),
                "z": round(z, 2),
                "trend_slope_per_month": fen_to_yuan_str(round(slope)),
                "relative_sd": round(relative_sd, 4),
                "trend": [{"month": m, "daily_rate": fen_to_yuan_str(round(r))}
                          for _, m, r in history],
                "min_excess": self.param("min_excess", province),
                "critical_excess": self.param("critical_excess", province),
                "min_z": self.param("min_z", province),
                "settlement_count": entry["s"],
            })]


def _rate(book, month: str) -> float | None:
    """A month's expenditure per day (the stream's first month by the days it covers)."""
    entry = book["months"].get(month)
    if not entry or not entry["s"]:
        return None
    year, mon = int(month[:4]), int(month[5:])
    days = calendar.monthrange(year, mon)[1]
    if book["first"][:7] == month:  # the stream began within it
        days -= date.fromisoformat(book["first"]).day - 1
    return entry["e"] / days
