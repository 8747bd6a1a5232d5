"""The pool book on its own: exact balances however many months are folded away,
late records, and the days it keeps for the daily judgement."""
from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

from rules.alerts import SHANGHAI
from rules.pools import (PoolBook, balance_at_day_end, balance_at_month_end, judged_days,
                         month_rows, month_span, trailing_months)

POOL = "440900:resident"


def bill(day: datetime, fen: int):
    return SimpleNamespace(kind="settlement", pool_key=POOL, fund_paid_fen=fen, settled_at=day)


def pay(day: datetime, fen: int, source: str = "individual"):
    return SimpleNamespace(kind="contribution", pool_key=POOL, source=source, amount_fen=fen,
                           received_at=day)


def midnight_after(day: datetime) -> datetime:
    d = day + timedelta(days=1)
    return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI)


def run(book: PoolBook, months: int):
    """A record or two a day for ``months`` months from 2023-01-01, closed daily."""
    state, day = None, datetime(2023, 1, 1, 10, tzinfo=SHANGHAI)
    total = 0
    for n in range(round(months * 30.44)):
        state = book.apply(state, bill(day, 1000 + n))
        state = book.apply(state, pay(day, 1500))
        if n % 10 == 0:
            state = book.apply(state, pay(day, 700, "adjustment_out"))  # sent positive
        total += 1500 - (1000 + n) - (700 if n % 10 == 0 else 0)
        state = book.close(state, midnight_after(day))
        day += timedelta(days=1)
    return state, total, day


def test_folding_months_away_keeps_the_balance_exact():
    live, total, day = run(PoolBook(keep_months=13), 30)
    replay, total_replay, _ = run(PoolBook(keep_months=None), 30)
    assert total == total_replay
    last = max(replay["months"])
    assert len(live["months"]) <= 14 < len(replay["months"])
    assert live["carried"] != [0, 0]
    assert balance_at_month_end(live, last) == balance_at_month_end(replay, last) == total
    # The months both still hold give the same rows, to the fen (months of payment
    # too where all 12 trailing months are still held).
    kept = month_span(min(live["months"]), last)
    ours, theirs = month_rows(live, kept), month_rows(replay, kept)
    assert [r.balance_end for r in ours] == [r.balance_end for r in theirs]
    full = [k for k, m in enumerate(kept) if trailing_months(m)[0] >= kept[0]]
    assert full and [ours[k] for k in full] == [theirs[k] for k in full]


def test_a_late_record_counts_in_its_month_and_in_the_balance():
    book = PoolBook(keep_months=13)
    state, total, day = run(book, 20)
    closed_day = datetime.fromisoformat(state["closed"] + "T10:00:00+08:00")
    late = closed_day - timedelta(days=3)          # a closed day of a kept month
    ancient = closed_day - timedelta(days=500)     # before every month kept
    before = balance_at_month_end(state, max(state["months"]))
    month = late.strftime("%Y-%m")
    spent = state["months"][month]["e"]
    state = book.apply(state, bill(late, 5000))
    state = book.apply(state, bill(ancient, 7000))
    assert state["late"] == 2
    assert state["months"][month]["e"] == spent + 5000
    assert balance_at_month_end(state, max(state["months"])) == before - 12000
    assert ancient.strftime("%Y-%m") not in state["months"]  # it went to the carried total


def test_the_book_keeps_the_days_the_daily_judgement_needs():
    book = PoolBook()
    state, _, day = run(book, 3)
    # Every day from the first of the month last closed is there, so a day's balance
    # is its month's days summed; earlier days are gone.
    since = state["since"]
    assert since.endswith("-01") and min(state["days"]) == since
    last = state["closed"]
    assert balance_at_day_end(state, last) == balance_at_month_end(state, last[:7])
    # A rule judging from scratch starts at the first day kept, not the book's first.
    assert judged_days(state, None, midnight_after(day))[0] == since
    # Closing again at the same midnight changes nothing.
    assert book.close(state, midnight_after(day - timedelta(days=1))) is state
