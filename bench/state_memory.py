"""How much memory the state of a large province takes: the issue-11 memory target.

    python bench/state_memory.py [--persons 1000000] [--institutions 10000]
                                 [--pools 300] [--days 30] [--seed 5] [--partitions 4]
                                 [--store memory|rocksdb] [--retention-days 400]

1. Writes a synthetic stream (contract JSON lines) in which every one of
   ``--persons`` insured persons settles at least once in ``--days`` days, at
   ``--institutions`` institutions (hospitals, primary care, pharmacies of 100
   chains) spread over ``--pools`` pools (half as many regions in several provinces,
   each with its employee and resident pool), with the workday contributions of
   every pool. Inpatient stays carry bed days; some care is elsewhere in the
   province or in another province.
2. Replays it in a fresh process through every stage a live worker runs —
   validation, admission (the ledger), every rule and the pool books, the daily
   closes with the per-partition models — keeping the state and the ledger as a
   worker's tables hold them: each value its JSON bytes (streams.changelog), in
   dicts (``--store memory``) or in RocksDB databases opened with the worker's own
   options, one per table and partition (``--store rocksdb``, streams.tables).
3. Prints the child's peak resident memory (VmHWM) and its baseline before the
   first record, the state's slots by kind of key, and its size as JSON (what the
   changelog topics' compacted tails hold). The last line is JSON.

A live worker holds the same bytes in its tables, plus Faust's and aiokafka's own
buffers (the throughput bench's worker, with a small state, peaks near 300 MB).
What the replay driver would keep and a worker sends on (alert revisions, model
scores, dead letters) is dropped after every batch, as the worker drops it.
"""
from __future__ import annotations

import argparse
import gc
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import MutableMapping
from datetime import date, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Provinces whose regions the pools are drawn from (prefixes of the contract's codes).
PROVINCES = ["11", "31", "32", "33", "35", "37", "41", "42", "43", "44", "45", "50", "51",
             "53", "61"]
DIAGNOSES = ["J06.9", "J18.9", "I10", "E11.9", "K29.7", "M54.5", "N39.0", "I63.9", "K35.8",
             "S52.5", "C34.9", "O80", "I25.1", "J44.1", "N18.3", "H25.9"]


def regions(n: int) -> list[str]:
    """``n`` region codes: cities 01.. of the provinces above, in turn."""
    return [f"{PROVINCES[i % len(PROVINCES)]}{i // len(PROVINCES) + 1:02d}00"
            for i in range(n)]


def money(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def write_stream(out: Path, persons: int, institutions: int, pools: int, days: int,
                 seed: int, start: date = date(2025, 3, 1)) -> dict:
    rng = random.Random(seed)
    region_codes = regions(max(1, pools // 2))
    by_province: dict[str, list[str]] = {}
    for code in region_codes:
        by_province.setdefault(code[:2], []).append(code)
    # Institutions: 30% hospitals, 40% primary care, 30% pharmacies (in 100 chains).
    inst = []
    for i in range(institutions):
        region = region_codes[i % len(region_codes)]
        kind = rng.choices(("hospital", "primary_care", "pharmacy"), (3, 4, 3))[0]
        prefix = {"hospital": "H", "primary_care": "C", "pharmacy": "P"}[kind]
        level = rng.choice((1, 2, 3)) if kind == "hospital" else (1 if kind == "primary_care"
                                                                   else None)
        chain = f"PCH{rng.randrange(100):03d}" if kind == "pharmacy" else None
        inst.append((f"{prefix}{region}{i:05d}", kind, level, chain, region))
    by_region: dict[str, dict[str, list]] = {}
    for entry in inst:
        by_region.setdefault(entry[4], {}).setdefault(entry[1], []).append(entry)

    def institution(region: str, kind: str):
        pool_of = by_region.get(region, {}).get(kind)
        if not pool_of:
            pool_of = [e for e in inst if e[1] == kind] or inst
        return rng.choice(pool_of)

    # Each person's visits: 1 + a few more; their days spread over the period.
    visits: list[list[tuple]] = [[] for _ in range(days)]
    for p in range(persons):
        region = region_codes[p % len(region_codes)]
        itype = "employee" if rng.random() < 0.45 else "resident"
        person = (f"{region}{itype[0].upper()}{p:08d}", rng.choice("FM"), rng.randrange(1, 95),
                  itype, region)
        n = 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
        for _ in range(n):
            visits[rng.randrange(days)].append(person)
    lines = 0
    settlement_no = 0
    with open(out, "wb") as f:
        for day in range(days):
            today = start + timedelta(days=day)
            if today.weekday() < 5:  # every pool's contributions, each workday
                for region in region_codes:
                    for itype in ("employee", "resident"):
                        f.write(orjson.dumps({
                            "schema": "contribution/v1",
                            "contribution_id": f"K{region}{itype[0]}{today:%Y%m%d}",
                            "received_at": f"{today.isoformat()}T09:00:00+08:00",
                            "pool_region": region, "insurance_type": itype,
                            "amount": money(rng.randrange(2_000_000_00, 9_000_000_00)),
                            "source": "employer"}) + b"\n")
                        lines += 1
            todays = visits[day]
            rng.shuffle(todays)
            seconds = sorted(rng.randrange(7 * 3600, 22 * 3600) for _ in todays)
            for person, second in zip(todays, seconds):
                pid, sex, age, itype, home = person
                where = rng.random()
                if where < 0.92:
                    region, filing = home, "none"
                elif where < 0.97:
                    region, filing = rng.choice(by_province[home[:2]]), "none"
                else:
                    region, filing = rng.choice(region_codes), "long_term"
                visit = rng.choices(("outpatient", "pharmacy", "inpatient", "emergency"),
                                    (70, 20, 7, 3))[0]
                kind = {"pharmacy": "pharmacy", "inpatient": "hospital",
                        "emergency": "hospital"}.get(visit) or rng.choice(("hospital",
                                                                          "primary_care"))
                inst_id, inst_kind, level, chain, _ = institution(region, kind)
                settlement_no += 1
                record = {
                    "schema": "settlement/v1", "settlement_id": f"S{settlement_no:010d}",
                    "settled_at": f"{today.isoformat()}T{second // 3600:02d}:"
                                  f"{second % 3600 // 60:02d}:{second % 60:02d}+08:00",
                    "person_id": pid, "sex": sex, "age": age, "insurance_type": itype,
                    "insured_region": home, "treatment_region": region,
                    "institution_id": inst_id, "institution_type": inst_kind,
                    "institution_level": level, "chain_id": chain, "visit_type": visit,
                    "diagnoses": [] if visit == "pharmacy" else rng.sample(DIAGNOSES, 1 + (
                        rng.random() < 0.3)),
                    "filing": filing, "reverses": None}
                if visit == "inpatient":
                    stay = rng.randrange(1, 15)
                    record["admitted_on"] = (today - timedelta(days=stay)).isoformat()
                    record["discharged_on"] = today.isoformat()
                    bed = 60_00 * stay
                    rest = rng.randrange(2_000_00, 40_000_00)
                    total = bed + rest
                    record["items"] = [
                        {"category": "bed", "amount": money(bed), "quantity": stay},
                        {"category": "drug", "amount": money(rest // 2)},
                        {"category": "treatment", "amount": money(rest - rest // 2)}]
                else:
                    total = rng.randrange(20_00, 1_500_00)
                fund = total * rng.randrange(40, 80) // 100
                record.update(total_cost=money(total), fund_paid=money(fund),
                              personal_paid=money(total - fund))
                f.write(orjson.dumps(record) + b"\n")
                lines += 1
    return {"lines": lines, "settlements": settlement_no, "regions": len(region_codes)}


class RocksTable(MutableMapping):
    """A table's store as a RocksDB worker holds it: one database per partition,
    opened with the worker's options (streams.tables.ROCKSDB_OPTIONS, through
    Faust's RocksDBOptions), keys JSON-encoded as Faust encodes them."""

    def __init__(self, directory: Path, name: str, partitions: int) -> None:
        from faust.stores.rocksdb import RocksDBOptions

        from streams.tables import ROCKSDB_OPTIONS

        options = {k: v for k, v in ROCKSDB_OPTIONS.items() if k != "driver"}
        self.dbs = [RocksDBOptions(**options, use_rocksdict=True).open(
            directory / f"{name}-{p}.db") for p in range(partitions)]

    def _db(self, key: bytes):
        return self.dbs[zlib.crc32(key) % len(self.dbs)]

    def __getitem__(self, key: str) -> bytes:
        encoded = orjson.dumps(key)
        value = self._db(encoded).get(encoded)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default=None):
        encoded = orjson.dumps(key)
        value = self._db(encoded).get(encoded)
        return default if value is None else value

    def __setitem__(self, key: str, value: bytes) -> None:
        encoded = orjson.dumps(key)
        self._db(encoded).put(encoded, value)

    def __delitem__(self, key: str) -> None:
        encoded = orjson.dumps(key)
        if self._db(encoded).get(encoded) is None:
            raise KeyError(key)
        self._db(encoded).delete(encoded)

    def __iter__(self):
        for db in self.dbs:
            for key in db.keys():
                yield orjson.loads(key)

    def items(self):
        for db in self.dbs:
            for key, value in db.items():
                yield orjson.loads(key), value

    def __len__(self) -> int:
        return sum(1 for db in self.dbs for _ in db.keys())


def child(path: str, partitions: int, store: str = "memory", batch: int = 500,
          retention_days: int = 0) -> None:
    """Replay ``path`` through the offline driver; print one JSON line of figures."""
    from rules.core import DetectionCore, load_rules
    from streams.changelog import EncodedValues, StateOverlay
    from streams.offline import OfflinePipeline

    # The state and the ledger as a worker's tables hold them (each value its JSON
    # bytes), written once per batch of records through an overlay, as the worker's
    # stages write them.
    if store == "rocksdb":
        directory = Path(tempfile.mkdtemp(prefix="fundwatch-tables-"))
        ledger = EncodedValues(RocksTable(directory, "ledger", partitions))
        state = EncodedValues(RocksTable(directory, "rule-state", partitions))
    else:
        ledger, state = EncodedValues({}), EncodedValues({})
    pipeline = OfflinePipeline(DetectionCore(load_rules(), partitions=partitions),
                               ledger=StateOverlay(ledger), state=StateOverlay(state),
                               retention_days=retention_days or None)
    gc.collect()
    baseline = _rss_mb("VmRSS")
    started = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            pipeline.feed(line.rstrip(b"\n"))
            if n % batch == 0:
                _save(pipeline, ledger, state)
    _save(pipeline, ledger, state)
    elapsed = time.perf_counter() - started
    peak = _rss_mb("VmHWM")
    slots: Counter = Counter()
    state_bytes: Counter = Counter()
    keys: dict[str, set] = {}
    for slot, value in state.store.items():
        rule_id, _, key = slot.partition("|")
        slots[rule_id] += 1
        state_bytes[rule_id] += len(slot) + 2 + len(value)
        if key.startswith("~"):  # a partition's model, not a key's state
            continue
        keys.setdefault(rule_id, set()).add(key)
    ledger_bytes = sum(len(k) + 2 + len(v) for k, v in ledger.store.items())
    print(orjson.dumps({
        "store": store, "records": n, "records_per_s": round(n / elapsed, 1), "seconds": round(elapsed, 1),
        "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(peak, 1),
        "slots": dict(slots), "state_json_mb": round(sum(state_bytes.values()) / 1e6, 1),
        "state_json_mb_by_rule": {k: round(v / 1e6, 2) for k, v in state_bytes.most_common()},
        "ledger_entries": len(ledger.store), "ledger_json_mb": round(ledger_bytes / 1e6, 1),
        "ledger_ids": sum(1 for key in ledger.store if key.startswith(("s:", "c:"))),
        "retention_days": retention_days,
        "persons": len(keys.get("overlapping_stay", set()) | keys.get("split_admission", set())
                       | keys.get("phantom_bed", set())),
        "institutions": len(keys.get("cross_province_surge", set())
                            | keys.get("diagnosis_restriction", set())
                            | keys.get("unfiled_cross_region", set())),
        "pools": len(keys.get("pool_fund", ())),
        "counts": dict(pipeline.counts)}).decode(), flush=True)
    if store == "rocksdb":
        shutil.rmtree(directory, ignore_errors=True)


def _save(pipeline, ledger, state) -> None:
    """The batch's writes into the encoded tables; a fresh overlay for the next."""
    from streams.changelog import StateOverlay

    for table, overlay in ((ledger, pipeline.ledger), (state, pipeline.state)):
        for key, value in overlay.changed.items():
            if value is None:  # forgotten by the ledger's retention
                table.pop(key, None)
            else:
                table[key] = value
    pipeline.ledger, pipeline.state = StateOverlay(ledger), StateOverlay(state)
    # A worker sends these on (alerts, scores and dead-letter topics) and keeps none.
    pipeline.emitted.clear()
    pipeline.alerts.clear()
    pipeline.scores.clear()
    pipeline.deadletters.clear()


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    from infra.config import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--institutions", type=int, default=10_000)
    ap.add_argument("--pools", type=int, default=300)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--store", choices=("memory", "rocksdb"), default="memory",
                    help="where the two large tables are kept (a worker's table_store)")
    ap.add_argument("--retention-days", type=int,
                    default=Settings().ledger_retention_days,
                    help="days the ledger remembers ids (a worker's ledger_retention_days; "
                         "0: for ever)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.partitions, args.store, retention_days=args.retention_days)
        return
    out = Path(tempfile.mkdtemp(prefix="fundwatch-state-")) / "stream.jsonl"
    started = time.perf_counter()
    made = write_stream(out, args.persons, args.institutions, args.pools, args.days,
                        args.seed)
    print(f"stream: {made['lines']:,} records ({made['settlements']:,} settlements, "
          f"{args.persons:,} persons, {args.institutions:,} institutions, "
          f"{2 * made['regions']} pools, {args.days} days) in "
          f"{time.perf_counter() - started:.0f} s: {out} ({out.stat().st_size / 1e6:,.0f} MB)",
          flush=True)
    result = subprocess.run([sys.executable, __file__, "--child", str(out),
                             "--partitions", str(args.partitions), "--store", args.store,
                             "--retention-days", str(args.retention_days)],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    figures = orjson.loads(result.stdout.strip().splitlines()[-1])
    print(f"replay: {figures['records']:,} records at {figures['records_per_s']:,.0f}/s; "
          f"state of {figures['persons']:,} persons, {figures['institutions']:,} "
          f"institutions, {figures['pools']:,} pools; ledger {figures['ledger_entries']:,} "
          f"entries", flush=True)
    print(f"peak RSS {figures['peak_rss_mb']:,.0f} MB (baseline {figures['baseline_rss_mb']:,.0f}"
          f" MB); state as JSON {figures['state_json_mb']:,.1f} MB + ledger "
          f"{figures['ledger_json_mb']:,.1f} MB", flush=True)
    out.unlink()
    print(orjson.dumps({**figures, "target_mb": 2048,
                        "within_target": figures["peak_rss_mb"] <= 2048}).decode())


if __name__ == "__main__":
    main()
