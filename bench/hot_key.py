"""What one settlement costs a rule as its key's day fills: a busy chain, a busy hospital.

    python bench/hot_key.py [--sizes 1000,4000,16000,64000] [--branches 400] [--days 1]

Every settlement of a pharmacy chain goes to the chain's one state
(``pharmacy_chain_anomaly``), every cross-province settlement of a hospital to the
hospital's (``cross_province_surge``), and each rule keeps a day's settlements by
id. A large chain in a large province has tens of thousands of insured sales a day,
a national hospital thousands of patients from other provinces. For each rule and
each size N, N settlements of one key a day (``--days``, 1 by default; the
figures are the last day's) are run through
``DetectionCore.process`` and ``commit`` — what both drivers do per record, with
state replaced and compared as they replace and compare it — and the CPU per
record is printed, then the day's close, and the state's JSON size (what the live
worker writes to the rule-state changelog when a batch changes the key).

And what a live batch with a record of the key pays for its state at the day's
end, whatever the batch's size (``streams.changelog.EncodedValues``, pieces of the
default 512 KiB): writing it (encoding, cutting into pieces), and reading it at the
next batch, decoded from its JSON ("read, decoded": what every batch paid before
values in pieces were kept decoded) and as kept ("read, kept").

The figure to read is ``growth``: CPU per record at the largest N over the
smallest, measured in the same run. 1.0 means a record costs the same on the
busiest day as on a quiet one; a rule that copies its whole day per record grows
with N (before ``rules.detail``: 12.9 µs at 1,000 a day of one chain, 412.8 µs at
64,000, 32×).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.alerts import SHANGHAI
from rules.builtin.cross_province_surge import CrossProvinceSurge
from rules.builtin.pharmacy_chain_anomaly import PharmacyChainAnomaly
from rules.core import DetectionCore
from streams.changelog import EncodedValues
from streams.records import fen_to_yuan_str, parse

DAY = datetime(2025, 3, 3, tzinfo=SHANGHAI)


def record(n: int, size: int, **fields) -> dict:
    """A settlement/v1 record, the n-th of ``size`` a day, spread over its day."""
    at = DAY + timedelta(days=n // size, seconds=n % size * 86_000 // size)
    fund = 2_000 + n % 3_000
    return {"schema": "settlement/v1", "settlement_id": f"S{n:07d}",
            "settled_at": at.isoformat(), "person_id": f"P{n * 7 % (size // 3 + 1):07d}",
            "sex": "F", "age": 60, "insurance_type": "employee", "diagnoses": ["E11.9"],
            "total_cost": fen_to_yuan_str(fund + fund // 4), "fund_paid": fen_to_yuan_str(fund),
            "personal_paid": fen_to_yuan_str(fund // 4), "filing": "long_term",
            "reverses": None, **fields}


def chain_sale(n: int, size: int, branches: int) -> dict:
    branch = n % branches
    region = "440300" if branch % 2 else "450100"
    return record(n, size, insured_region=region, treatment_region=region,
                  institution_id=f"P{region}{branch:04d}", institution_type="pharmacy",
                  institution_level=None, chain_id="PCH9", visit_type="pharmacy")


def hospital_stay(n: int, size: int, branches: int) -> dict:
    return record(n, size, insured_region=f"45{n % 14 + 1:02d}00",
                  treatment_region="440300", institution_id="H440300001",
                  institution_type="hospital", institution_level=3, chain_id=None,
                  visit_type="outpatient")


RULES = {"pharmacy_chain_anomaly": (PharmacyChainAnomaly, "chain", "PCH9", chain_sale),
         "cross_province_surge": (CrossProvinceSurge, "institution", "H440300001",
                                  hospital_stay)}


def day_of(rule_id: str, size: int, branches: int, days: int = 1) -> dict:
    cls, kind, key, make = RULES[rule_id]
    core = DetectionCore([cls()])
    state: dict = {}
    for day in range(days):
        events = [parse(orjson.dumps(make(n, size, branches)))
                  for n in range(day * size, (day + 1) * size)]
        started = time.process_time()
        for n, event in enumerate(events, day * size):
            core.commit(state, core.process(kind, key, event, state, (0, n)))
        per_record = (time.process_time() - started) / size
        started = time.process_time()
        closed = core.close(list(state), state, DAY + timedelta(days=day + 1))
        close_s = time.process_time() - started
        core.commit(state, closed)
    slot = f"{rule_id}|{key}"
    table = EncodedValues({})
    write_s = _timed(lambda: table.__setitem__(slot, state[slot]))
    decoded_s = _timed(lambda: EncodedValues(table.store).get(slot))
    kept_s = _timed(lambda: table.get(slot))
    return {"rule": rule_id, "settlements": size, "us_per_record": round(per_record * 1e6, 1),
            "close_ms": round(close_s * 1e3, 1),
            "state_bytes": len(orjson.dumps(state[slot])),
            "batch_write_ms": round(write_s * 1e3, 2),
            "batch_read_decoded_ms": round(decoded_s * 1e3, 2),
            "batch_read_kept_ms": round(kept_s * 1e3, 3)}


def _timed(step) -> float:
    """The least CPU of three runs of ``step``, in seconds."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        step()
        best = min(best, time.process_time() - started)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000,64000",
                        help="settlements of the one key in its day, comma-separated")
    parser.add_argument("--branches", type=int, default=400,
                        help="the chain's pharmacy branches (in two provinces)")
    parser.add_argument("--days", type=int, default=1,
                        help="days of settlements; the figures are the last day's "
                             "(9: a chain holds 9 days of settlements, a hospital 14)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'rule':<24} {'settlements a day':>17} {'µs per record':>14} "
          f"{'close ms':>9} {'state bytes':>12} | a batch's state, ms: "
          f"{'write':>6} {'read, decoded':>13} {'read, kept':>10}")
    summary = {}
    for rule_id in RULES:
        rows = [day_of(rule_id, size, args.branches, args.days) for size in sizes]
        for row in rows:
            print(f"{rule_id:<24} {row['settlements']:>17,} {row['us_per_record']:>14} "
                  f"{row['close_ms']:>9} {row['state_bytes']:>12,} | {'':>21}"
                  f"{row['batch_write_ms']:>6} {row['batch_read_decoded_ms']:>13} "
                  f"{row['batch_read_kept_ms']:>10}")
        summary[rule_id] = {"us_per_record": [r["us_per_record"] for r in rows],
                            "growth": round(rows[-1]["us_per_record"]
                                            / rows[0]["us_per_record"], 2),
                            **{name: [r[name] for r in rows] for name in (
                                "batch_write_ms", "batch_read_decoded_ms",
                                "batch_read_kept_ms")}}
    print(orjson.dumps({"sizes": sizes, "days": args.days, **summary}).decode())


if __name__ == "__main__":
    main()
