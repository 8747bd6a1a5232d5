"""A pool's fund, in event time: the book the pool rules judge from (基金收支).

A pool is (region, insurance type). Its book adds up, per Asia/Shanghai day and
calendar month of the event time:

* **income** — every ``contribution/v1`` to the pool. ``adjustment_out`` (调剂金上解)
  is money leaving the pool whatever sign it was sent with, so it counts as
  ``-|amount|``; ``adjustment_in`` (调剂金拨入) counts as received. *Revenue* (what
  an adjustment ratio applies to) is employer + individual + fiscal subsidy.
* **expenditure** — the ``fund_paid`` of every settlement, against the person's
  **insured** pool (where the care was given does not matter). A reversal (冲正)
  carries the negated amounts and so subtracts; a duplicate never reaches the
  book (admission drops it), and a redelivered record is applied once (the
  detection core's positions).

From these: the balance at any day's or month's end (the registry's opening
balance + all income − all expenditure up to then), and the months of payment
that balance covers (可支付月数). Everything is integer fen; ratios are exact
fractions until printed.

**Late records** (older than the watermark when they arrive) are added like any
other: the balance is always exact. A day or month the rules have already judged
is not judged again.

The book keeps the days of the month last closed and every day after it (the
balance rule judges each day, and a day's balance needs its month's days), and
``keep_months`` calendar months
(older months are folded into one carried total: the balance stays exact, the
per-month history goes). Replay keeps every month (``keep_months=None``) for its
balances file; no rule looks back more than ``MAX_LOOKBACK_MONTHS``.

>>> from datetime import datetime
>>> from types import SimpleNamespace as E
>>> from rules.alerts import SHANGHAI
>>> book = PoolBook()
>>> pay = E(kind="contribution", pool_key="440900:resident", source="individual",
...         amount_fen=500_000, received_at=datetime(2025, 1, 6, 9, tzinfo=SHANGHAI))
>>> bill = E(kind="settlement", pool_key="440900:resident", fund_paid_fen=120_000,
...          settled_at=datetime(2025, 1, 7, 9, tzinfo=SHANGHAI), reverses=None)
>>> state = book.apply(book.apply(None, pay), bill)
>>> state["months"]["2025-01"]["i"], state["months"]["2025-01"]["e"]
(500000, 120000)
>>> balance_at_day_end(state, "2025-01-07")
380000
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any, Iterable, Mapping

from rules.alerts import day_of, previous_month
from rules.core import Book

MAX_LOOKBACK_MONTHS = 13  # the most any pool rule looks back (12 trailing months + this one)
DEFAULT_KEEP_MONTHS = 25


def empty_month() -> dict[str, int]:
    # i income, e expenditure, rev revenue (employer+individual+fiscal), out paid up to
    # the adjustment fund (positive), in drawn from it, s settlements (reversals too)
    return {"i": 0, "e": 0, "rev": 0, "out": 0, "in": 0, "s": 0}


class PoolBook(Book):
    """Income and expenditure of one pool per day and month (see the module doc)."""

    book_id = "pool_fund"
    key_kind = "pool"

    def __init__(self, registry=None, keep_months: int | None = DEFAULT_KEEP_MONTHS) -> None:
        super().__init__(registry)
        if keep_months is not None and keep_months < MAX_LOOKBACK_MONTHS:
            raise ValueError(f"keep_months must be at least {MAX_LOOKBACK_MONTHS}")
        self.keep_months = keep_months

    def apply(self, state, event):
        if event.kind == "settlement":
            moment, income, expenditure = event.settled_at, 0, event.fund_paid_fen
            fields = {"e": expenditure, "s": 1}
        else:
            moment, expenditure = event.received_at, 0
            amount = event.amount_fen
            if event.source == "adjustment_out":
                income = -abs(amount)
                fields = {"i": income, "out": abs(amount)}
            elif event.source == "adjustment_in":
                income = amount
                fields = {"i": income, "in": amount}
            else:
                income = amount
                fields = {"i": income, "rev": amount}
        st = state or self.open(event.pool_key)
        day = day_of(moment)
        month = day[:7]
        late = st["closed"] is not None and day <= st["closed"]
        out = {**st, "first": min(st["first"] or day, day)}
        if late:
            out["late"] = st["late"] + 1
        if st["floor"] is None or month >= st["floor"]:
            entry = st["months"].get(month) or empty_month()
            out["months"] = {**st["months"],
                             month: {k: v + fields.get(k, 0) for k, v in entry.items()}}
        else:  # older than every month kept: only the carried total can take it
            ci, ce = st["carried"]
            out["carried"] = [ci + income, ce + expenditure]
        if day in st["days"] or not late or day[:7] >= st["closed"][:7]:
            di, de = st["days"].get(day, (0, 0))
            out["days"] = {**st["days"], day: [di + income, de + expenditure]}
        return out

    def open(self, pool_key: str) -> dict[str, Any]:
        registered = self.registry is not None and pool_key in self.registry.pools
        opening = self.registry.opening_balance_fen(pool_key) if registered else 0
        # "registered": the opening balance is known, so the balance means something.
        return {"pool": pool_key, "opening": opening, "registered": registered,
                "first": None, "closed": None,
                "days": {}, "months": {}, "carried": [0, 0], "floor": None, "late": 0}

    def close(self, state, midnight):
        """Every day before ``midnight`` is complete: remember it (a record for it is
        late from now on) and let old days and months go."""
        if not state:
            return state
        closed = day_of(midnight - timedelta(days=1))
        if state["closed"] is not None and closed <= state["closed"]:
            return state
        # Days are kept from the first day of the month the *previous* close reached:
        # the rules judging right after this close still need every day from the one
        # they judged last (a balance at a day's end sums its month's days), and no
        # later close needs more. The state is written on every record: keep it short.
        since = (state["closed"] or state["first"] or closed)[:7] + "-01"
        days = {d: v for d, v in state["days"].items() if d >= since}
        months, carried, floor = state["months"], state["carried"], state["floor"]
        if self.keep_months is not None:
            # Months before the floor live on only in the carried total.
            floor = max(floor or "", previous_month(closed[:7], self.keep_months - 1))
            old = [m for m in months if m < floor]
            if old:
                carried = [carried[0] + sum(months[m]["i"] for m in old),
                           carried[1] + sum(months[m]["e"] for m in old)]
                months = {m: v for m, v in months.items() if m >= floor}
        return {**state, "closed": closed, "days": days, "since": since, "months": months,
                "carried": carried, "floor": floor}


# --------------------------------------------------------------------------- figures


def balance_before_month(book: Mapping, month: str) -> int:
    """The accumulated balance when ``month`` begins."""
    ci, ce = book["carried"]
    return book["opening"] + ci - ce + sum(v["i"] - v["e"] for m, v in book["months"].items()
                                           if m < month)


def balance_at_month_end(book: Mapping, month: str) -> int:
    entry = book["months"].get(month) or empty_month()
    return balance_before_month(book, month) + entry["i"] - entry["e"]


def balance_at_day_end(book: Mapping, day: str) -> int:
    """The accumulated balance at the end of ``day``; the days of its month must be
    kept (they are for every day the rules still judge)."""
    month = day[:7]
    return balance_before_month(book, month) + sum(
        i - e for d, (i, e) in book["days"].items() if d[:7] == month and d <= day)


def trailing_months(month: str, n: int = 12) -> list[str]:
    """The ``n`` calendar months ending with ``month``, oldest first."""
    return [previous_month(month, k) for k in range(n - 1, -1, -1)]


def mean_monthly_expenditure(book: Mapping, months: Iterable[str]) -> Fraction | None:
    """Mean expenditure over those of ``months`` that have settlements; None if none."""
    with_data = [book["months"][m]["e"] for m in months
                 if m in book["months"] and book["months"][m]["s"]]
    if not with_data:
        return None
    return Fraction(sum(with_data), len(with_data))


def months_of_payment(balance: int, mean: Fraction | None) -> Fraction | None:
    """Months of mean expenditure the balance pays (可支付月数); None when there is no
    spending to measure by."""
    if mean is None or mean <= 0:
        return None
    return Fraction(balance) / mean


def two_decimals(value: Fraction) -> Decimal:
    """Rounded half up to two decimals (money and months are printed so)."""
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP) if value.denominator != 1 else \
        Decimal(value.numerator).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class MonthRow:
    """One row of ``--balances-out`` (contract: one per pool and calendar month)."""

    region: str
    insurance_type: str
    month: str
    income: int
    expenditure: int
    balance_end: int
    months_of_payment: Fraction | None


def month_span(first: str, last: str) -> list[str]:
    months, m = [], first
    while m <= last:
        months.append(m)
        year, mon = int(m[:4]), int(m[5:])
        m = f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"
    return months


def month_rows(book: Mapping, months: Iterable[str]) -> list[MonthRow]:
    """The contract's balance rows of one pool for ``months`` (consecutive, oldest
    first). ``months_of_payment`` = ``balance_end`` ÷ the mean expenditure of the
    months among the trailing 12 (ending with this one) that have settlements."""
    region, _, insurance_type = book["pool"].partition(":")
    rows = []
    for month in months:
        entry = book["months"].get(month) or empty_month()
        balance = balance_at_month_end(book, month)
        rows.append(MonthRow(region, insurance_type, month, entry["i"], entry["e"], balance,
                             months_of_payment(balance, mean_monthly_expenditure(
                                 book, trailing_months(month)))))
    return rows


def blank_book(pool_key: str, registry=None) -> dict[str, Any]:
    """The book of a registry pool no record has reached yet."""
    return PoolBook(registry).open(pool_key)


def judged_days(book: Mapping, judged: str | None, midnight: datetime) -> list[str]:
    """The days a daily judgement still owes at ``midnight``: from the day after
    ``judged`` (or the book's first day) to the last day before midnight."""
    last = day_of(midnight - timedelta(days=1))
    first = book["first"]
    if first is None:
        return []
    # Never before the days the book still keeps (a rule switched on long after its
    # pool's book began starts from there).
    first = max(first, book.get("since") or first)
    if judged is not None:
        first = max(first, (date.fromisoformat(judged) + timedelta(days=1)).isoformat())
    out, d = [], date.fromisoformat(first)
    end = date.fromisoformat(last)
    while d <= end:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


def judged_months(book: Mapping, judged: str | None, midnight: datetime) -> list[str]:
    """The calendar months that ended by ``midnight`` and are not judged yet, from the
    book's first month on."""
    if book["first"] is None:
        return []
    ended = previous_month(day_of(midnight)[:7])
    return [m for m in month_span(book["first"][:7], ended) if judged is None or m > judged]


def close_months(state, midnight: datetime, book, judge) -> tuple[dict | None, list]:
    """A monthly pool rule's ``close``: ``judge(month) -> alerts`` for each calendar
    month that ended by ``midnight`` and is not judged yet, oldest first; the
    state remembers the last month judged."""
    if not book:
        return state, []
    months = judged_months(book, (state or {}).get("judged"), midnight)
    if not months:
        return state, []
    return {"judged": months[-1]}, [alert for month in months for alert in judge(month)]


def provincial_finding(registry, region: str, exhausted: bool) -> tuple[list[str], dict]:
    """Regions and duties of a pool finding. When the pool's own balance is exhausted
    the province's fund is drawn on (adjustment fund) or carries the gap (unified
    collection): a provincial-level finding, so the capital's center is named too."""
    capital = registry.capital_of(region) if registry is not None and exhausted else None
    if capital is None or capital == region:
        return [region], {}
    mode = (registry.provinces.get(region[:2]) or {}).get("mode", "adjustment_fund")
    fund = ("the provincial fund (统收统支)" if mode == "unified"
            else "the provincial adjustment fund (调剂金)")
    return [region, capital], {
        region: "Explain the gap and the plan to close it; the pool's own accumulated "
                f"balance no longer covers it and {fund} is drawn on",
        capital: f"Provincial level: assess the draw on {fund} and whether the pool's "
                 "management (not its insured population) caused the gap",
    }
