"""Alerts and balances as tables for the auditor's own tools (Excel, pandas, a data
warehouse): CSV and Parquet, through pandas.

One row per alert — its fixed fields as columns, the subject and window flattened,
lists joined, and the evidence kept whole as JSON (each rule's evidence differs,
and nothing of it may be lost) — and one row per pool and month, the contract's
balances file with money as exact decimal strings in the CSV and as
``decimal128(18, 2)`` in Parquet, never as floats.

>>> alert = {"schema": "alert/v1", "alert_id": "fw-1", "rule_id": "pool_deficit",
...          "severity": "warning", "subject": {"kind": "pool", "id": "440900:resident"},
...          "regions": ["440900"], "review": "single",
...          "window": {"start": "2025-03-01T00:00:00+08:00",
...                     "end": "2025-04-01T00:00:00+08:00"},
...          "detected_at": "2025-04-01T00:00:00+08:00", "summary": "deficit",
...          "evidence": {"deficit": "1.00"}, "settlement_ids": ["S1", "S2"]}
>>> frame = alerts_frame([alert])
>>> frame.loc[0, "subject_id"], frame.loc[0, "settlement_ids"], frame.loc[0, "evidence"]
('440900:resident', 'S1 S2', '{"deficit":"1.00"}')
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Iterable

import orjson
import pandas as pd

from rules.pools import MonthRow, two_decimals
from sinks.balances import BALANCE_COLUMNS, csv_row

ALERT_COLUMNS = ("alert_id", "rule_id", "severity", "subject_kind", "subject_id", "regions",
                 "review", "window_start", "window_end", "detected_at", "summary",
                 "settlement_ids", "duties", "evidence")


def alerts_frame(alerts: Iterable[dict]) -> pd.DataFrame:
    rows = [{
        "alert_id": a["alert_id"], "rule_id": a["rule_id"], "severity": a["severity"],
        "subject_kind": a["subject"]["kind"], "subject_id": a["subject"]["id"],
        "regions": " ".join(a["regions"]), "review": a.get("review", "single"),
        "window_start": a["window"]["start"], "window_end": a["window"]["end"],
        "detected_at": a["detected_at"], "summary": a["summary"],
        "settlement_ids": " ".join(a.get("settlement_ids") or []),
        "duties": orjson.dumps(a.get("duties") or {}).decode(),
        "evidence": orjson.dumps(a["evidence"]).decode(),
    } for a in alerts]
    return pd.DataFrame(rows, columns=list(ALERT_COLUMNS))


def balances_frame(rows: Iterable[MonthRow]) -> pd.DataFrame:
    """The balances file as a frame: money as Decimal (exact), months of payment as
    Decimal with two places or None."""
    out = []
    for row in rows:
        region, insurance_type, month, income, expenditure, balance, mop = csv_row(row)
        out.append({"region": region, "insurance_type": insurance_type, "month": month,
                    "income": Decimal(income), "expenditure": Decimal(expenditure),
                    "balance_end": Decimal(balance),
                    "months_of_payment": (None if row.months_of_payment is None
                                          else two_decimals(row.months_of_payment))})
    return pd.DataFrame(out, columns=list(BALANCE_COLUMNS))


def write_exports(alerts: list[dict], balance_rows: list[MonthRow], directory: str | Path
                  ) -> list[Path]:
    """alerts.csv, alerts.parquet, balances.csv and balances.parquet in ``directory``."""
    import pyarrow as pa

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    frame = alerts_frame(alerts)
    frame.to_csv(directory / "alerts.csv", index=False, lineterminator="\n")
    frame.to_parquet(directory / "alerts.parquet", index=False)
    written += [directory / "alerts.csv", directory / "alerts.parquet"]
    balances = balances_frame(balance_rows)
    balances.to_csv(directory / "balances.csv", index=False, lineterminator="\n")
    money = pa.decimal128(18, 2)
    schema = pa.schema([("region", pa.string()), ("insurance_type", pa.string()),
                        ("month", pa.string()), ("income", money), ("expenditure", money),
                        ("balance_end", money), ("months_of_payment", pa.decimal128(12, 2))])
    balances.to_parquet(directory / "balances.parquet", index=False, schema=schema)
    written += [directory / "balances.csv", directory / "balances.parquet"]
    return written
