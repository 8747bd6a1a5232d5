"""An independent batch computation of the contract's monthly pool balances, in pandas.

It shares nothing with the pool book but the contract validator (``records.parse``
decides which lines are valid records; everything after that is done here again):
first copy of an id wins, a reversal counts only when its original came before it
and was not reversed yet, ``adjustment_out`` is money out whatever its sign,
months are Asia/Shanghai calendar months of the event time, and
``months_of_payment`` is the balance ÷ the mean expenditure of those of the 12
months ending with the row's month that have settlements.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import orjson
import pandas as pd

from streams.records import Rejected, parse


def _fen(value) -> int:
    return int(Decimal(str(value)) * 100)


def accepted_records(lines: list[bytes]) -> list[dict]:
    seen: set[str] = set()
    reversed_ids: set[str] = set()
    settled: dict[str, dict] = {}
    out = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            parse(raw)
        except Rejected:
            continue
        record = orjson.loads(raw)
        rid = record.get("settlement_id") or record["contribution_id"]
        if rid in seen:
            continue  # an exact or a conflicting duplicate: the first copy stands
        if record["schema"] == "settlement/v1" and record.get("reverses"):
            original = settled.get(record["reverses"])
            if (original is None or original.get("reverses")
                    or record["reverses"] in reversed_ids
                    or _fen(original["fund_paid"]) != -_fen(record["fund_paid"])
                    or original["person_id"] != record["person_id"]
                    or original["institution_id"] != record["institution_id"]):
                continue
            reversed_ids.add(record["reverses"])
        seen.add(rid)
        if record["schema"] == "settlement/v1":
            settled[rid] = record
        out.append(record)
    return out


def monthly_balances(lines: list[bytes], opening: dict[str, int]) -> pd.DataFrame:
    """Rows as the contract's balances file: region, insurance_type, month, income,
    expenditure, balance_end, months_of_payment (strings, as written)."""
    rows = []
    for r in accepted_records(lines):
        if r["schema"] == "settlement/v1":
            rows.append({"pool": f"{r['insured_region']}:{r['insurance_type']}",
                         "at": r["settled_at"], "income": 0,
                         "expenditure": _fen(r["fund_paid"]), "settlement": 1})
        else:
            amount = _fen(r["amount"])
            rows.append({"pool": f"{r['pool_region']}:{r['insurance_type']}",
                         "at": r["received_at"],
                         "income": -abs(amount) if r["source"] == "adjustment_out" else amount,
                         "expenditure": 0, "settlement": 0})
    df = pd.DataFrame(rows)
    df["month"] = (pd.to_datetime(df["at"], utc=True, format="ISO8601")
                   .dt.tz_convert("Asia/Shanghai").dt.strftime("%Y-%m"))
    months = pd.period_range(df["month"].min(), df["month"].max(), freq="M").strftime("%Y-%m")
    pools = sorted(set(df["pool"]) | set(opening), key=lambda k: tuple(k.split(":")))
    grid = pd.MultiIndex.from_product([pools, months], names=["pool", "month"])
    sums = (df.groupby(["pool", "month"])[["income", "expenditure", "settlement"]].sum()
            .reindex(grid, fill_value=0).reset_index())
    out = []
    for pool, group in sums.groupby("pool", sort=False):
        group = group.sort_values("month")
        balance = opening.get(pool, 0) + (group["income"] - group["expenditure"]).cumsum()
        spent = group["expenditure"].where(group["settlement"] > 0)  # NaN: no settlements
        values = list(zip(group["month"], group["income"], group["expenditure"],
                          balance, spent))
        for k, (month, income, expenditure, bal, _) in enumerate(values):
            window = [s for _, _, _, _, s in values[max(0, k - 11):k + 1] if pd.notna(s)]
            if window and sum(window) > 0:
                mop = Fraction(int(bal)) / Fraction(int(sum(window)), len(window))
                mop_text = str((Decimal(mop.numerator) / Decimal(mop.denominator))
                               .quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
            else:
                mop_text = ""
            region, insurance_type = pool.split(":")
            out.append({"region": region, "insurance_type": insurance_type, "month": month,
                        "income": _yuan(int(income)), "expenditure": _yuan(int(expenditure)),
                        "balance_end": _yuan(int(bal)), "months_of_payment": mop_text})
    return pd.DataFrame(out)


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
