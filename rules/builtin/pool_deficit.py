"""pool_deficit — a calendar month whose expenditure exceeds its income (收不抵支).

Judged once per pool and calendar month (Asia/Shanghai, event time), when the
month is complete (the drivers' ``close`` timer), from the pool's book
(``rules.pools``): income = every contribution to the pool that month (money paid
up to the adjustment fund counts against it, money drawn from it for it),
expenditure = the ``fund_paid`` of its insured persons' settlements, reversals
subtracted.

* **Alert** when expenditure exceeds income by more than ``min_deficit_share`` of
  the income (default 5%: a month with more discharges than remittance days runs a
  small gap that the next month closes; 0 flags every gap). One alert per pool and
  month (window = the month).
* **Critical** when the deficit exceeds ``critical_deficit_share`` of the income
  (20%), or when it leaves the accumulated balance at or below zero — the pool's
  own money is gone and the province's fund pays: then the alert names the
  capital's center too.
* A pool that has received no contribution at all in the stream is not judged:
  its income is simply not fed to fundwatch, and every month would look like a
  deficit.

>>> from datetime import datetime
>>> from rules.alerts import SHANGHAI
>>> book = {"pool": "441500:resident", "opening": 1_000_00, "registered": True,
...         "first": "2025-01-01",
...         "closed": "2025-01-31", "carried": [0, 0], "floor": None, "late": 0, "days": {},
...         "months": {"2025-01": {"i": 700_00, "e": 800_00, "rev": 700_00, "out": 0,
...                                "in": 0, "s": 30}}}
>>> state, fired = PoolDeficit().close(None, datetime(2025, 2, 1, tzinfo=SHANGHAI), book)
>>> fired[0]["severity"], fired[0]["evidence"]["deficit"], fired[0]["evidence"]["balance_end"]
('warning', '100.00', '900.00')
"""
from __future__ import annotations

from fractions import Fraction

from rules.alerts import make_alert, month_window
from rules.core import Param, Rule
from rules.pools import (balance_at_month_end, balance_before_month, close_months,
                         provincial_finding)
from streams.records import fen_to_yuan_str


class PoolDeficit(Rule):
    rule_id = "pool_deficit"
    description = "A pool's expenditure in a calendar month exceeds its income (收不抵支)"
    subject_kind = "pool"
    key_kind = "pool"
    book = "pool_fund"
    params = {
        "min_deficit_share": Param(float, 0.05, "deficit, as a share of the month's income, "
                                   "above which an alert is raised (0 = any deficit)",
                                   minimum=0.0),
        "critical_deficit_share": Param(float, 0.2, "deficit share of the month's income "
                                        "above which the alert is critical", minimum=0.0),
    }

    def close(self, state, midnight, book=None):
        """Judge each calendar month that ended by ``midnight`` and is not judged yet."""
        return close_months(state, midnight, book, lambda month: self._judge(book, month))

    def _judge(self, book, month: str) -> list[dict]:
        entry = book["months"].get(month)
        if not entry or entry["e"] <= entry["i"]:
            return []
        # Income is fed to fundwatch for this pool at all? (Only months up to the
        # judged one count: a live worker may already hold later ones.)
        if not (book["carried"][0] or any(v["i"] for m, v in book["months"].items()
                                          if m <= month)):
            return []
        pool = book["pool"]
        region = pool.split(":")[0]
        province = region[:2]
        deficit = entry["e"] - entry["i"]
        share = Fraction(deficit, entry["i"]) if entry["i"] > 0 else None
        if share is not None and share <= Fraction(str(self.param("min_deficit_share",
                                                                  province))):
            return []
        balance_end = balance_at_month_end(book, month)
        # A pool the registry does not list has no known opening balance: only the
        # month's own figures speak.
        exhausted = book.get("registered", False) and balance_end <= 0
        critical = (exhausted or share is None
                    or share > Fraction(str(self.param("critical_deficit_share", province))))
        regions, duties = provincial_finding(self.registry, region, exhausted=exhausted)
        covered_by = ("the provincial fund (the pool's own balance is exhausted)" if exhausted
                      else "the pool's own accumulated balance")
        return [make_alert(
            self.rule_id, "critical" if critical else "warning", "pool", pool,
            regions=regions, window=month_window(month),
            detected_at=month_window(month)["end"],
            summary=(f"{pool}: expenditure ¥{fen_to_yuan_str(entry['e'])} exceeded income "
                     f"¥{fen_to_yuan_str(entry['i'])} in {month} (收不抵支), a deficit of "
                     f"¥{fen_to_yuan_str(deficit)}"
                     + (f" ({float(share):.0%} of income)" if share is not None else "")
                     + f"; covered by {covered_by}"),
            evidence={
                "month": month,
                "income": fen_to_yuan_str(entry["i"]),
                "expenditure": fen_to_yuan_str(entry["e"]),
                "deficit": fen_to_yuan_str(deficit),
                "deficit_share": round(float(share), 4) if share is not None else None,
                "revenue": fen_to_yuan_str(entry["rev"]),
                "paid_up_to_adjustment_fund": fen_to_yuan_str(entry["out"]),
                "drawn_from_adjustment_fund": fen_to_yuan_str(entry["in"]),
                "balance_start": fen_to_yuan_str(balance_before_month(book, month)),
                "balance_end": fen_to_yuan_str(balance_end),
                "covered_by": covered_by,
                "min_deficit_share": self.param("min_deficit_share", province),
                "critical_deficit_share": self.param("critical_deficit_share", province),
                "settlement_count": entry["s"],
            },
            duties=duties or None)]
