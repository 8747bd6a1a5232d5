"""Pool balances out of the books: the contract's balances file and the pools table.

Both read the pool books (``rules.pools``) that the detection core keeps — from a
replay's memory or from a running deployment's changelog — and never recompute
anything from events, so what an auditor exports is what the rules judged from.

>>> from rules.pools import PoolBook
>>> book = PoolBook().open("440900:resident")
>>> book["months"] = {"2025-01": {"i": 100_00, "e": 40_00, "rev": 100_00, "out": 0,
...                               "in": 0, "s": 3}}
>>> book["first"] = "2025-01-03"
>>> rows = balance_rows({"440900:resident": book})
>>> [csv_row(r) for r in rows]
[['440900', 'resident', '2025-01', '100.00', '40.00', '60.00', '1.50']]
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Mapping

from rules.pools import (MonthRow, balance_at_month_end, balance_before_month, blank_book,
                         mean_monthly_expenditure,
                         month_rows, month_span, months_of_payment, trailing_months,
                         two_decimals)
from rules.alerts import previous_month
from streams.records import fen_to_yuan_str

BALANCE_COLUMNS = ("region", "insurance_type", "month", "income", "expenditure",
                   "balance_end", "months_of_payment")
BOOK_PREFIX = "pool_fund|"


def books_in(state: Mapping[str, dict]) -> dict[str, dict]:
    """The pool books among a detection core's state slots (offline dict or a table
    read back), by pool key."""
    return {slot[len(BOOK_PREFIX):]: stored["v"] for slot, stored in state.items()
            if slot.startswith(BOOK_PREFIX) and stored}


def with_registry_pools(books: Mapping[str, dict], registry) -> dict[str, dict]:
    """Every pool of the registry too, with its opening balance, reached by a record
    or not: a pool with nothing in the stream still has a balance."""
    out = dict(books)
    if registry is not None:
        for pool_key in registry.pools:
            out.setdefault(pool_key, blank_book(pool_key, registry))
    return out


def balance_rows(books: Mapping[str, dict]) -> list[MonthRow]:
    """One row per pool and calendar month from the stream's first month to its last
    (over every pool), ordered by region, insurance type, month."""
    months = [m for book in books.values() for m in book["months"]]
    if not months:
        return []
    span = month_span(min(months), max(months))
    rows = []
    for pool_key in sorted(books, key=lambda k: tuple(k.split(":"))):
        rows += month_rows(books[pool_key], span)
    return rows


def csv_row(row: MonthRow) -> list[str]:
    mop = row.months_of_payment
    return [row.region, row.insurance_type, row.month, fen_to_yuan_str(row.income),
            fen_to_yuan_str(row.expenditure), fen_to_yuan_str(row.balance_end),
            "" if mop is None else str(two_decimals(mop))]


def write_balances_csv(rows: Iterable[MonthRow], path: str | Path) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(BALANCE_COLUMNS)
        for row in rows:
            writer.writerow(csv_row(row))
            n += 1
    return n


# --------------------------------------------------------------------------- daily timeline


class DailyBalances:
    """Each pool's balance at the end of every day, collected while a replay runs.

    The books keep only the days the rules still judge, so the timeline is read as
    days are closed: ``observe`` is the offline driver's ``on_close`` hook. A day with
    no record keeps the balance of the day before. Months of payment are the balance
    rule's measure (the balance ÷ the mean expenditure of the trailing 12 complete
    months before the day's month that have settlements).

    >>> from datetime import datetime
    >>> from rules.alerts import SHANGHAI
    >>> book = {"pool": "440900:resident", "opening": 1000_00, "first": "2025-01-30",
    ...         "carried": [0, 0], "days": {"2025-01-30": [0, 300_00]},
    ...         "months": {"2025-01": {"i": 0, "e": 300_00, "rev": 0, "out": 0, "in": 0,
    ...                                "s": 4}}}
    >>> timeline = DailyBalances()
    >>> timeline.observe({"pool_fund|440900:resident": {"v": book}},
    ...                  datetime(2025, 2, 2, tzinfo=SHANGHAI))
    >>> timeline.pools["440900:resident"]
    {'2025-01-30': (70000, None), '2025-01-31': (70000, None), '2025-02-01': (70000, Fraction(7, 3))}
    """

    def __init__(self) -> None:
        self.pools: dict[str, dict[str, tuple[int, Fraction | None]]] = {}

    def observe(self, state: Mapping[str, dict], midnight) -> None:
        from datetime import date, timedelta

        last = (midnight - timedelta(days=1)).date()
        for pool_key, book in books_in(state).items():
            if not book.get("first"):
                continue
            series = self.pools.setdefault(pool_key, {})
            day = date.fromisoformat(max(series) if series else book["first"])
            day += timedelta(days=1) if series else timedelta(0)
            month, balance, mean = None, 0, None
            while day <= last:
                iso = day.isoformat()
                if iso[:7] != month:  # a month's first day: its opening and baseline
                    month = iso[:7]
                    balance = balance_before_month(book, month) + sum(
                        i - e for d, (i, e) in book["days"].items() if month <= d < iso)
                    mean = mean_monthly_expenditure(book, trailing_months(
                        previous_month(month)))
                income, expenditure = book["days"].get(iso, (0, 0))
                balance += income - expenditure
                series[iso] = (balance, months_of_payment(balance, mean))
                day += timedelta(days=1)


# --------------------------------------------------------------------------- pools table


@dataclass(frozen=True)
class PoolLine:
    pool: str
    name: str
    balance: int
    month: str
    month_income: int
    month_expenditure: int
    months_of_payment: Fraction | None
    band: str
    # the last complete month's daily expenditure against the pool's own trend
    # (pool_expenditure_surge's measure): +0.12 = 12% above; None: too little history
    vs_trend: float | None = None


def band_of(mop: Fraction | None, rule, province: str) -> str:
    """The balance rule's band for a months-of-payment figure, with the province's
    configured lines (no hysteresis: a snapshot, not an episode)."""
    if mop is None:
        return "-"
    if mop < Fraction(str(rule.param("critical_months", province))):
        return "critical"
    if mop < Fraction(str(rule.param("warning_months", province))):
        return "warning"
    surplus = rule.param("surplus_months", province)
    if surplus and mop > Fraction(str(surplus)):
        return "surplus"
    return "ok"


def pool_lines(books: Mapping[str, dict], registry=None, rule=None, surge=None
               ) -> list[PoolLine]:
    """Each pool as of the newest month any book has: its balance now, that month's
    income and expenditure, and the months of payment as the balance rule measures
    them (the balance ÷ the mean of the trailing 12 complete months with settlements;
    before any month is complete, of the running one)."""
    from rules.builtin.pool_balance_low import PoolBalanceLow
    from rules.builtin.pool_expenditure_surge import PoolExpenditureSurge

    rule = rule or PoolBalanceLow()
    surge = surge or PoolExpenditureSurge()
    months = [m for book in books.values() for m in book["months"]]
    if not months:
        return []
    current = max(months)
    lines = []
    for pool_key in sorted(books, key=lambda k: tuple(k.split(":"))):
        book = books[pool_key]
        region = pool_key.split(":")[0]
        balance = balance_at_month_end(book, current)
        mean = mean_monthly_expenditure(book, trailing_months(previous_month(current)))
        if mean is None:
            mean = mean_monthly_expenditure(book, [current])
        mop = months_of_payment(balance, mean)
        entry = book["months"].get(current) or {"i": 0, "e": 0}
        name = (registry.pools.get(pool_key, {}).get("name", "") if registry else "") or ""
        trend = surge.trend(book, previous_month(current)) if book["first"] else None
        lines.append(PoolLine(pool_key, name or region, balance, current, entry["i"],
                              entry["e"], mop, band_of(mop, rule, region[:2]),
                              trend["excess"] if trend else None))
    return lines


def render_pools(lines: list[PoolLine]) -> list[str]:
    if not lines:
        return ["no pool has any record yet"]
    header = (f"{'pool':<18} {'name':<8} {'balance (¥)':>18} {'month':<7} "
              f"{'income (¥)':>16} {'expenditure (¥)':>16} {'vs trend':>9} {'months':>7}"
              "  band")
    out = [header, "-" * len(header)]
    for line in lines:
        mop = "-" if line.months_of_payment is None else f"{two_decimals(line.months_of_payment)}"
        trend = "-" if line.vs_trend is None else f"{line.vs_trend:+.0%}"
        out.append(f"{line.pool:<18} {_pad(line.name, 8)} {fen_to_yuan_str(line.balance):>18} "
                   f"{line.month:<7} {fen_to_yuan_str(line.month_income):>16} "
                   f"{fen_to_yuan_str(line.month_expenditure):>16} {trend:>9} {mop:>7}"
                   f"  {line.band}")
    out.append("(month: the newest month, running; vs trend: the last complete month's daily "
               "expenditure against the pool's own trend; months: of payment, by the last "
               "complete months)")
    return out


def _pad(text: str, width: int) -> str:
    """Left-justify for a terminal, where a Chinese character takes two columns."""
    import unicodedata

    used = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - used)
