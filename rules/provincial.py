"""The provincial layer: what provincial pooling does with the pools' books (省级统筹).

A pure function of the registry and the pools' books (``rules.pools``): no stream,
no clock. ``provincial_positions`` walks the calendar months of the books, oldest
first, and gives one :class:`ProvinceView` per province that has a pool in the
books or the registry; ``render_positions`` turns the views into text lines.

**Adjustment fund (调剂金)**, the preset in the registry's ``adjustment`` mapping
(``rules.registry.PRESETS``; every share and month there has a default):

* ``ratio`` — every month each pool pays ``adjustment_ratio[insurance type]`` of its
  fund revenue (employer + individual + fiscal subsidy, the book's ``rev``) up to
  the fund, rounded half up to the fen. Then a pool whose modelled balance is
  negative draws the gap, while the fund lasts: its own balance goes first, the
  fund tops it up to zero. When the fund cannot cover every gap of the month it
  pays pro rata to the gaps, each floored to the fen; the odd fen stay in the fund.
* ``fujian`` — as ``ratio``; 5% (``holdback``) of every allocation is held back, and
  in the year's last month (``year_end_month``, 12): the held-back money is shared
  out again (the data has no assessment scores, so in proportion to each pool's
  allocations that year); a net recipient's net draw above 20%
  (``recipient_draw_cap``) of its year's revenue is charged to the provincial risk
  fund instead (``referred``: the adjustment fund gets it back, the pool keeps it);
  a net contributor gets back its net payment above 9%
  (``contributor_refund_above``) of its year's revenue.
* ``ningxia`` — a pool in deficit lives on its own balance (its risk reserve is not
  in the data) and applies to the fund once a year per pool: in the year's last
  month, for the gap it has then.

**Modelled, not recorded.** The model pays up from ``rev``, never from ``i``: ``i``
already holds the adjustment flows the data recorded, which would count them twice.
So a pool's modelled own balance is: its balance when the first month begins
(opening + folded months) + revenue − expenditure − paid up + drawn + refunded +
referred; the recorded flows are shown beside the modelled ones. Money is kept:
the fund's balance = its opening − the sum of the pools' net positions.

**Unified collection (统收统支)**: the provincial fund is the sum of the pools'
accumulated balances (opening + income − expenditure), each pool a sub-account;
its months of payment = that sum ÷ the sum of the pools' mean monthly expenditure
(over the trailing 12 months that have settlements).

A ratio province, resident share 7%, one month: 茂名 spends more than it raises.

>>> reg = Registry.from_dict({"schema": "pools/v1", "provinces": {"44": {
...     "name": "广东省", "mode": "adjustment_fund", "adjustment_ratio": {"resident": 0.07}}}})
>>> def book(pool, rev, e):
...     return {"pool": pool, "opening": 0, "carried": [0, 0], "months": {"2025-01": {
...         "i": rev, "e": e, "rev": rev, "out": 0, "in": 0, "s": 1}}}
>>> view = provincial_positions(reg, {"440100:resident": book("440100:resident", 100_000, 20_000),
...                                   "440900:resident": book("440900:resident", 10_000, 15_000)})["44"]
>>> [(p.pool, p.paid_up, p.drawn, p.net_position, p.own_balance) for p in view.pools]
[('440100:resident', 7000, 0, -7000, 73000), ('440900:resident', 700, 5700, 5000, 0)]
>>> view.fund_balance              # 7000 + 700 paid up − 5700 drawn
2000
>>> render_positions({"44": view})[1]
'  adjustment fund 20.00 yuan (opening 0.00)'
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any, Mapping

from rules.pools import (balance_before_month, blank_book, empty_month,
                         mean_monthly_expenditure, month_span, months_of_payment,
                         trailing_months, two_decimals)
from rules.registry import Registry
from streams.records import fen_to_yuan_str

# The month key "0000-00" sorts before every real month: balance before it = opening
# + folded months, for a book seen with no month at all.
_BEFORE_ALL = "0000-00"


@dataclass(frozen=True)
class PoolPosition:
    """One pool of an adjustment-fund province, totals over the months walked (fen)."""

    pool: str                  # "region:insurance_type"
    insurance_type: str
    starting_balance: int      # opening + folded months, when the first month begins
    revenue: int               # employer + individual + fiscal subsidy (``rev``)
    expenditure: int
    paid_up: int               # modelled: share × revenue
    allocated: int             # modelled allocations by the fund, before any holdback
    held_back: int             # fujian: part of the allocations held back
    redistributed: int         # fujian: received at year ends from the held-back money
    referred: int              # fujian: net draw above the cap, charged to the risk fund
    drawn: int                 # paid by the adjustment fund: allocated − held back
                               # + redistributed − referred
    refunded: int              # fujian: returned to a net contributor
    net_position: int          # drawn + refunded − paid up
    own_balance: int           # starting + revenue − expenditure − paid up + drawn
                               # + refunded + referred
    recorded_paid_up: int      # adjustment_out in the data (``out``)
    recorded_drawn: int        # adjustment_in in the data (``in``)
    months_of_payment: Fraction | None  # own balance ÷ mean monthly expenditure

    @property
    def shortfall(self) -> int:
        """The gap no fund has closed (yet): a Ningxia pool before December, a pool
        the fund could not cover in full, a Fujian holdback."""
        return max(0, -self.own_balance)


@dataclass(frozen=True)
class SubAccount:
    """One pool of a unified province: its sub-account of the provincial fund (fen)."""

    pool: str
    insurance_type: str
    income: int                # over the months walked (folded months: in the balance)
    expenditure: int
    balance: int               # opening + all income − all expenditure
    months_of_payment: Fraction | None


@dataclass(frozen=True)
class ProvinceView:
    """A province's position at the end of ``as_of`` (None: no month in the books).

    Adjustment fund: ``fund_balance`` is the adjustment fund (held-back money
    included), ``held_back`` what it holds for the next redistribution,
    ``referred`` all referred to the risk fund, ``pools`` are
    :class:`PoolPosition`. Unified: ``fund_balance`` is the provincial fund,
    ``months_of_payment`` its months, ``pools`` are :class:`SubAccount`;
    ``preset`` is None."""

    province: str
    name: str | None
    mode: str                  # adjustment_fund | unified
    preset: str | None         # ratio | fujian | ningxia; None when unified
    as_of: str | None
    scheme: dict[str, Any]     # Registry.adjustment_scheme: every parameter, resolved
    opening_fund: int
    fund_balance: int
    held_back: int
    referred: int
    months_of_payment: Fraction | None
    pools: tuple

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: money in fen, shares and months as decimal strings."""
        def plain(value):
            if isinstance(value, Fraction):
                return str(two_decimals(value))
            if isinstance(value, Decimal):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value
        out = {k: plain(getattr(self, k)) for k in self.__dataclass_fields__ if k != "pools"}
        out["pools"] = [{k: plain(getattr(p, k)) for k in p.__dataclass_fields__}
                        for p in self.pools]
        return out


def provincial_positions(registry: Registry | None, books: Mapping[str, Mapping],
                         until: str | None = None) -> dict[str, ProvinceView]:
    """Province code → its view at the end of the last month of the books (or of
    ``until``, ``YYYY-MM``, if earlier). ``books`` maps pool key → the pool's book
    (``rules.pools.PoolBook``); a registry pool with no book counts with its opening
    balance. Raises ``RegistryError`` for a bad province entry."""
    registry = registry if registry is not None else Registry()
    books = dict(books)
    for key in registry.pools:
        if key not in books:
            books[key] = blank_book(key, registry)
    # Every calendar month from the first to the last, not only those with records:
    # a year-end month must not be skipped because no record happened to fall in it.
    present = sorted({m for b in books.values() for m in b.get("months", {})})
    months = month_span(present[0], present[-1]) if present else []
    if until is not None:
        months = [m for m in months if m <= until]
    by_province: dict[str, list[str]] = {}
    for key in sorted(books):
        by_province.setdefault(key[:2], []).append(key)
    views = {}
    for code, keys in sorted(by_province.items()):
        scheme = registry.adjustment_scheme(code)
        name = (registry.provinces.get(code) or {}).get("name")
        province_books = {k: books[k] for k in keys}
        if scheme["mode"] == "unified":
            views[code] = _unified(code, name, scheme, province_books, months)
        else:
            views[code] = _adjustment_fund(code, name, scheme, province_books, months)
    return views


# --------------------------------------------------------------------------- unified


def _unified(code, name, scheme, books, months) -> ProvinceView:
    as_of = months[-1] if months else None
    accounts, means = [], []
    for key, book in books.items():
        # The balance counts every month up to as_of, folded ones included.
        balance = _balance_at_end(book, as_of)
        mean = mean_monthly_expenditure(book, trailing_months(as_of)) if as_of else None
        if mean is not None:
            means.append(mean)
        rows = [book["months"].get(m) or empty_month() for m in months]
        accounts.append(SubAccount(key, key.partition(":")[2], sum(r["i"] for r in rows),
                                   sum(r["e"] for r in rows), balance,
                                   months_of_payment(balance, mean)))
    fund = sum(a.balance for a in accounts)
    return ProvinceView(code, name, "unified", None, as_of, scheme, 0, fund, 0, 0,
                        months_of_payment(fund, sum(means)) if means else None,
                        tuple(accounts))


def _balance_at_end(book, month: str | None) -> int:
    if month is None:
        return balance_before_month(book, _BEFORE_ALL)
    entry = book["months"].get(month) or empty_month()
    return balance_before_month(book, month) + entry["i"] - entry["e"]


# --------------------------------------------------------------------------- adjustment fund


def _adjustment_fund(code, name, scheme, books, months) -> ProvinceView:
    preset = scheme["preset"]
    year_end = scheme.get("year_end_month")
    holdback = scheme.get("holdback", Decimal(0))
    fields = ("revenue", "expenditure", "paid_up", "allocated", "held_back", "redistributed",
              "referred", "drawn", "refunded", "recorded_paid_up", "recorded_drawn")
    tot = {k: dict.fromkeys(fields, 0) for k in books}
    start = {k: balance_before_month(b, months[0] if months else _BEFORE_ALL)
             for k, b in books.items()}
    own = dict(start)
    year = {k: {"rev": 0, "paid": 0, "alloc": 0} for k in books}  # the running year's sums
    available = scheme["opening_fund_fen"]  # the fund less what it holds back
    held = 0

    for month in months:
        for key, book in books.items():
            entry = book["months"].get(month) or empty_month()
            ratio = scheme["adjustment_ratio"].get(key.partition(":")[2], Decimal(0))
            # Negative revenue (corrections above the month's receipts) pays nothing
            # up: the fund is not asked to give revenue shares back.
            paid = _half_up(ratio * max(entry["rev"], 0))
            own[key] += entry["rev"] - entry["e"] - paid
            available += paid
            t = tot[key]
            t["revenue"] += entry["rev"]
            t["expenditure"] += entry["e"]
            t["paid_up"] += paid
            t["recorded_paid_up"] += entry["out"]
            t["recorded_drawn"] += entry["in"]
            year[key]["rev"] += entry["rev"]
            year[key]["paid"] += paid
        last_of_year = int(month[5:7]) == year_end
        # The month's payments up are in the fund before anyone draws on it.
        if preset != "ningxia" or last_of_year:
            gaps = {k: -v for k, v in own.items() if v < 0}
            for key, amount in _pro_rata(gaps, available).items():
                kept = _half_up(holdback * amount) if preset == "fujian" else 0
                available -= amount
                held += kept
                own[key] += amount - kept
                year[key]["alloc"] += amount
                t = tot[key]
                t["allocated"] += amount
                t["held_back"] += kept
                t["drawn"] += amount - kept
        if preset == "fujian" and last_of_year:
            available, held = _settle_fujian_year(scheme, year, own, tot, available, held)
        if last_of_year:
            year = {k: {"rev": 0, "paid": 0, "alloc": 0} for k in books}

    positions = []
    for key, book in books.items():
        t = tot[key]
        net = t["drawn"] + t["refunded"] - t["paid_up"]
        mean = (mean_monthly_expenditure(book, trailing_months(months[-1])) if months
                else None)
        positions.append(PoolPosition(
            key, key.partition(":")[2], start[key], t["revenue"], t["expenditure"],
            t["paid_up"], t["allocated"], t["held_back"], t["redistributed"], t["referred"],
            t["drawn"], t["refunded"], net, own[key], t["recorded_paid_up"],
            t["recorded_drawn"], months_of_payment(own[key], mean)))
    return ProvinceView(code, name, "adjustment_fund", preset, months[-1] if months else None,
                        scheme, scheme["opening_fund_fen"], available + held, held,
                        sum(p.referred for p in positions), None, tuple(positions))


def _settle_fujian_year(scheme, year, own, tot, available, held):
    """Fujian's year end, in this order: share out the held-back money; charge each
    net recipient's net draw above the cap to the risk fund; refund each net
    contributor's net payment above its threshold. Returns (available, held)."""
    # Redistribution first, so the caps and refunds judge the year's whole
    # allocations (``alloc`` counts them before holdback). No assessment scores in
    # the data: in proportion to the allocations; the odd fen return to the fund.
    weights = {k: y["alloc"] for k, y in year.items() if y["alloc"] > 0}
    for key, share in _split(held, weights).items():
        own[key] += share
        tot[key]["redistributed"] += share
        tot[key]["drawn"] += share
        held -= share
    available, held = available + held, 0
    for key, y in year.items():
        over = y["alloc"] - y["paid"] - _half_up(scheme["recipient_draw_cap"] * max(y["rev"], 0))
        if y["alloc"] > y["paid"] and over > 0:
            # The risk fund takes this part over: the adjustment fund is repaid, the
            # pool keeps the money (it is not in the data what the risk fund decides).
            tot[key]["referred"] += over
            tot[key]["drawn"] -= over
            available += over
    refunds = {}
    for key, y in year.items():
        above = y["paid"] - y["alloc"] - _half_up(
            scheme["contributor_refund_above"] * max(y["rev"], 0))
        if y["paid"] > y["alloc"] and above > 0:
            refunds[key] = above
    for key, amount in _pro_rata(refunds, available).items():
        own[key] += amount
        tot[key]["refunded"] += amount
        available -= amount
    return available, held


def _half_up(amount: Decimal) -> int:
    return int(Decimal(amount).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _pro_rata(requests: Mapping[str, int], available: int) -> dict[str, int]:
    """Every request in full if the fund covers them all; else the fund shared in
    proportion to the requests, floored to the fen (the odd fen stay in the fund)."""
    if sum(requests.values()) <= available:
        return dict(requests)
    return _split(max(available, 0), requests)


def _split(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    total = sum(weights.values())
    if total <= 0 or amount <= 0:
        return {}
    return {k: amount * w // total for k, w in weights.items()}


# --------------------------------------------------------------------------- text

_MODE_TEXT = {"adjustment_fund": "adjustment fund (调剂金)",
              "unified": "unified collection and payment (统收统支)"}


def _months_text(value: Fraction | None) -> str:
    return "-" if value is None else str(two_decimals(value))


def render_positions(views: Mapping[str, ProvinceView]) -> list[str]:
    """Readable lines, one block per province; money in yuan with two decimals."""
    yuan = fen_to_yuan_str
    lines = []
    for code, view in sorted(views.items()):
        title = f"{code} {view.name}" if view.name else code
        preset = f", preset {view.preset}" if view.preset else ""
        lines.append(f"{title} — {_MODE_TEXT[view.mode]}{preset}, as of {view.as_of or '-'}")
        if view.mode == "unified":
            lines.append(f"  provincial fund {yuan(view.fund_balance)} yuan, "
                         f"{_months_text(view.months_of_payment)} months of payment")
            for acc in view.pools:
                lines.append(f"  {acc.pool}  sub-account {yuan(acc.balance)}  "
                             f"months {_months_text(acc.months_of_payment)}")
            continue
        extra = ""
        if view.preset == "fujian":
            extra = (f"; held back {yuan(view.held_back)}; referred to the risk fund "
                     f"{yuan(view.referred)}")
        lines.append(f"  adjustment fund {yuan(view.fund_balance)} yuan "
                     f"(opening {yuan(view.opening_fund)}{extra})")
        for p in view.pools:
            fujian = (f"  held back {yuan(p.held_back)}  referred {yuan(p.referred)}"
                      if view.preset == "fujian" else "")
            lines.append(
                f"  {p.pool}  revenue {yuan(p.revenue)}  paid up {yuan(p.paid_up)} "
                f"(recorded {yuan(p.recorded_paid_up)})  drawn {yuan(p.drawn)} "
                f"(recorded {yuan(p.recorded_drawn)})  refunded {yuan(p.refunded)}{fujian}  "
                f"net {yuan(p.net_position)}  own balance {yuan(p.own_balance)}  "
                f"months {_months_text(p.months_of_payment)}")
    return lines
