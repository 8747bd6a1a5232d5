"""pool_balance_low — how many months of payment a pool's balance still covers (可支付月数).

The classic fund early-warning indicator, judged **every day** once the day is
complete (the drivers' ``close`` timer; the figures come from the pool's book,
``rules.pools``):

* balance = the registry's opening balance + all income − all expenditure up to
  the end of the day;
* mean monthly expenditure = the mean over the trailing 12 calendar months
  *before* the day's month that have settlements (complete months only: the
  running month would understate it); with fewer than ``min_baseline_months`` (3)
  of them the day is not judged — one month is no baseline (a stream that starts
  with stays already running settles fewer bills in its first month);
* months of payment = balance ÷ that mean.

Bands (per province, configurable): **critical** below ``critical_months`` (3),
**warning** below ``warning_months`` (6), and **info** above ``surplus_months``
(12; 0 = off) — idle money is a finding too (结余过多).

**An alert fires when a pool enters a band or escalates** (warning → critical),
not every day it stays there. Entering opens an *episode*; its alert's window is
the day it began, so an escalation updates the same alert (same ``alert_id``,
higher severity). Leaving needs a margin (``recovery_margin_months``, 0.5): a
balance hovering at the line does not open an episode every other day. A
de-escalation (critical → warning) is no news; a recovery ends the episode and a
later fall opens a new one.

Only pools the registry lists are judged: without their opening balance the
balance means nothing. When the balance is exhausted (≤ 0) the province's fund pays: the alert also names
the capital's center (``rules.pools.provincial_finding``).

>>> from datetime import datetime
>>> from rules.alerts import SHANGHAI
>>> book = {"pool": "440900:resident", "opening": 500_00, "registered": True,
...         "first": "2025-01-01",
...         "closed": "2025-02-01", "carried": [0, 0], "floor": None, "late": 0,
...         "months": {"2025-01": {"i": 0, "e": 100_00, "rev": 0, "out": 0, "in": 0, "s": 9},
...                    "2025-02": {"i": 0, "e": 150_00, "rev": 0, "out": 0, "in": 0, "s": 9}},
...         "days": {"2025-02-01": [0, 150_00]}}
>>> rule = PoolBalanceLow(min_baseline_months=1)
>>> state, fired = rule.close(None, datetime(2025, 2, 2, tzinfo=SHANGHAI), book)
>>> fired[0]["severity"], fired[0]["evidence"]["months_of_payment"]   # 250 ÷ 100
('critical', 2.5)
>>> rule.close(state, datetime(2025, 2, 2, tzinfo=SHANGHAI), book) == (state, [])
True
"""
from __future__ import annotations

from datetime import date, timedelta

from rules.alerts import day_window, make_alert, previous_month
from rules.core import Param, Rule
from rules.pools import (balance_at_day_end, judged_days, mean_monthly_expenditure,
                         months_of_payment, provincial_finding, trailing_months, two_decimals)
from streams.records import fen_to_yuan_str

RANK = {"info": 0, "warning": 1, "critical": 2}


class PoolBalanceLow(Rule):
    rule_id = "pool_balance_low"
    description = ("A pool's balance covers fewer months of payment than its bands allow "
                   "(or far more: an excessive surplus)")
    subject_kind = "pool"
    key_kind = "pool"
    book = "pool_fund"
    params = {
        "critical_months": Param(float, 3.0, "months of payment below which the alert is "
                                 "critical", minimum=0.0),
        "warning_months": Param(float, 6.0, "months of payment below which a warning is "
                                "raised", minimum=0.0),
        "surplus_months": Param(float, 12.0, "months of payment above which an info alert "
                                "reports an excessive surplus (0 = off)", minimum=0.0),
        "recovery_margin_months": Param(float, 0.5, "how far back past a band's line the "
                                        "balance must come to end an episode", minimum=0.0),
        "min_baseline_months": Param(int, 3, "complete months with settlements the mean "
                                     "monthly expenditure needs before a day is judged",
                                     minimum=1, maximum=12),
    }

    def close(self, state, midnight, book=None):
        """Judge each complete day not judged yet, oldest first."""
        if not book or not book.get("registered"):
            return state, []  # no opening balance known: the balance would mean nothing
        days = judged_days(book, (state or {}).get("judged"), midnight)
        if not days:
            return state, []
        region = book["pool"].split(":")[0]
        province = region[:2]
        episode = (state or {}).get("episode")
        alerts = []
        for day in days:
            month = day[:7]
            baseline = trailing_months(previous_month(month))
            with_data = [m for m in baseline if m in book["months"] and book["months"][m]["s"]]
            if len(with_data) < self.param("min_baseline_months", province):
                continue
            mean = mean_monthly_expenditure(book, baseline)
            balance = balance_at_day_end(book, day)
            mop = months_of_payment(balance, mean)
            if mop is None:
                continue
            band = self._band(float(mop), episode, province)
            if band is None:
                episode = None
                continue
            severity = "info" if band == "surplus" else band
            kind = "surplus" if band == "surplus" else "low"
            if episode is None or episode["kind"] != kind:
                episode = {"kind": kind, "day": day, "severity": severity, "band": band}
                alerts.append(self._alert(book, day, episode, balance, mean, mop, baseline,
                                          None))
            elif RANK[severity] > RANK[episode["severity"]]:
                escalated_from = episode["severity"]
                episode = {**episode, "severity": severity, "band": band}
                alerts.append(self._alert(book, day, episode, balance, mean, mop, baseline,
                                          escalated_from))
            else:
                episode = {**episode, "band": band}
        return {"judged": days[-1], "episode": episode}, alerts

    def _band(self, mop: float, episode, province: str) -> str | None:
        critical = self.param("critical_months", province)
        warning = self.param("warning_months", province)
        surplus = self.param("surplus_months", province)
        margin = self.param("recovery_margin_months", province)
        kind = episode["kind"] if episode else None
        if mop < critical:
            return "critical"
        if mop < warning or (kind == "low" and mop < warning + margin):
            return "warning"
        if surplus > 0 and (mop > surplus or (kind == "surplus" and mop > surplus - margin)):
            return "surplus"
        return None

    def _alert(self, book, day, episode, balance, mean, mop, baseline, escalated_from):
        pool = book["pool"]
        region = pool.split(":")[0]
        province = region[:2]
        regions, duties = provincial_finding(self.registry, region, exhausted=balance <= 0)
        months = float(two_decimals(mop))
        # Up to the judged day only: the book may already hold later days' records.
        to_date = [v for d, v in book["days"].items() if d[:7] == day[:7] and d <= day]
        if episode["kind"] == "surplus":
            line = self.param("surplus_months", province)
            summary = (f"{pool}: the balance ¥{fen_to_yuan_str(balance)} covers {months:.2f} "
                       f"months of payment on {day}, above the {line:g}-month ceiling "
                       "(excessive surplus, 结余过多)")
        else:
            line = self.param("critical_months" if episode["severity"] == "critical"
                              else "warning_months", province)
            summary = (f"{pool}: the balance ¥{fen_to_yuan_str(balance)} covers only "
                       f"{months:.2f} months of payment on {day} (below {line:g}: "
                       f"{episode['severity']})"
                       + (f", escalated from {escalated_from}" if escalated_from else ""))
        evidence = {
            "day": day,
            "balance": fen_to_yuan_str(balance),
            "opening_balance": fen_to_yuan_str(book["opening"]),
            "mean_monthly_expenditure": fen_to_yuan_str(round(mean)),
            "months_of_payment": months,
            "band": episode["band"],
            "episode_start": episode["day"],
            "critical_months": self.param("critical_months", province),
            "warning_months": self.param("warning_months", province),
            "surplus_months": self.param("surplus_months", province),
            "baseline_months": [
                {"month": m, "expenditure": fen_to_yuan_str(book["months"][m]["e"])}
                for m in baseline if m in book["months"] and book["months"][m]["s"]],
            "month_to_date_income": fen_to_yuan_str(sum(i for i, _ in to_date)),
            "month_to_date_expenditure": fen_to_yuan_str(sum(e for _, e in to_date)),
        }
        if escalated_from:
            evidence["escalated_from"] = escalated_from
        end = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        return make_alert(
            self.rule_id, episode["severity"], "pool", pool, regions=regions,
            window=day_window(date.fromisoformat(episode["day"])),
            detected_at=f"{end}T00:00:00+08:00",
            summary=summary, evidence=evidence, duties=duties or None)
