"""How fast ``diagnosis_restriction`` judges settlements, with a small and a large table.

    python bench/knowledge_speed.py [--settlements 200000] [--entries 20000] [--seed 1]

Prints settlements/s of the rule's ``apply`` alone (the detection core's part;
parsing and the broker are measured by ``fundwatch bench``):

* with the shipped example table (``rules/builtin/diagnosis_restriction.csv``) on
  settlements whose diagnoses follow the simulator's case mix (``streams.simulate``)
  drawn without regard to the patient's sex and age, so that about 2% contradict it;
* with a generated table of ``--entries`` code prefixes (1 to 7 characters; a tenth
  restrict the sex, the rest an age range that few patients fall outside) on
  settlements drawn from a vocabulary of ``--codes`` distinct codes, half of them
  under a table prefix — a first pass (each code looked up for the first time) and
  a second (the lookup memo warm, as in a long-running worker);
* for scale, a naive linear scan of the large table on a small sample;
* the cost of building alerts: every settlement in conflict (a man coded O80).

Lookup is one dict probe per prefix length (longest first) and a memo, so the rate
barely depends on the table's size; what costs is building an alert.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.alerts import SHANGHAI  # noqa: E402
from rules.builtin.diagnosis_restriction import DiagnosisRestriction  # noqa: E402
from rules.knowledge import KnowledgeTable  # noqa: E402
from streams.records import Settlement  # noqa: E402
from streams.simulate import DIAGNOSES, SECONDARY  # noqa: E402

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def generated_rows(n: int, rng: random.Random) -> list[str]:
    """CSV rows for ``n`` distinct prefixes of every length, each with a constraint."""
    lengths = [1] + [2] * 4 + [3] * 120 + [4] * 500 + [5] * 300 + [6] * 60 + [7] * 15
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        size = rng.choice(lengths)
        code = rng.choice(LETTERS) + "".join(rng.choice("0123456789")
                                             for _ in range(min(size, 3) - 1))
        if size > 3:
            code += "." + "".join(rng.choice("0123456789X") for _ in range(size - 3))
        if code in seen:
            continue
        seen.add(code)
        if rng.random() < 0.1:
            rows.append(f"{code},{rng.choice('MF')},,,generated,bench")
        else:
            rows.append(f"{code},,{rng.randint(0, 3)},{rng.randint(90, 130)},generated,bench")
    return rows


def random_code(rng: random.Random, prefixes: list[str]) -> str:
    key = rng.choice(prefixes) if rng.random() < 0.5 else rng.choice(LETTERS)
    while len(key) < 3:
        key += rng.choice("0123456789")
    key += "".join(rng.choice("0123456789X") for _ in range(rng.choice((0, 0, 1, 1, 2, 4))))
    key = key[:7]
    return key if len(key) == 3 else key[:3] + "." + key[3:]


def settlements(n: int, rng: random.Random, draw) -> list[Settlement]:
    start = datetime(2025, 1, 1, 8, tzinfo=SHANGHAI)
    out = []
    for i in range(n):
        fund = rng.randint(0, 2_000_000)
        out.append(Settlement(
            schema="settlement/v1", settlement_id=f"B{i}", settled_at=start + timedelta(
                seconds=13 * i), person_id=f"P{i % 99_991}", sex=rng.choice("MF"),
            age=rng.randint(0, 95), insurance_type="resident", insured_region="440900",
            treatment_region="440100", institution_id=f"H44010{i % 300:04d}",
            institution_type="hospital", institution_level=2, chain_id=None,
            visit_type="outpatient", admitted_on=None, discharged_on=None,
            diagnoses=draw(), total_cost_fen=fund + 5000, fund_paid_fen=fund,
            personal_paid_fen=5000, items=None, filing="none", reverses=None))
    return out


def case_mix(rng: random.Random):
    """Diagnoses as the simulator draws them, ignoring age and sex (so that some
    contradict the patient), with its chronic secondary diagnoses."""
    codes = [d.code for d in DIAGNOSES]
    weights = [d.op_w + d.ip_w + d.em_w + d.ph_w for d in DIAGNOSES]
    sec_codes = [c for c, _ in SECONDARY]
    sec_weights = [w for _, w in SECONDARY]

    def draw():
        primary = rng.choices(codes, weights)[0]
        extra = rng.choices(sec_codes, sec_weights, k=rng.choice((0, 0, 1, 2)))
        return (primary, *dict.fromkeys(c for c in extra if c != primary))
    return draw


def rate(rule: DiagnosisRestriction, events: list[Settlement]) -> tuple[float, int]:
    apply = rule.apply
    alerts = 0
    started = time.perf_counter()
    for event in events:
        alerts += len(apply(None, event)[1])
    return len(events) / (time.perf_counter() - started), alerts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settlements", type=int, default=200_000)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--codes", type=int, default=30_000,
                        help="distinct diagnosis codes the large table's settlements use")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    shipped = DiagnosisRestriction()
    events = settlements(args.settlements, rng, case_mix(rng))
    per_s, alerts = rate(shipped, events)
    print(f"shipped table ({len(shipped.table_for())} entries), simulator case mix: "
          f"{per_s:,.0f} settlements/s over {len(events):,} ({alerts:,} alerts)")

    with tempfile.TemporaryDirectory() as folder:
        rows = generated_rows(args.entries, rng)
        path = Path(folder) / "generated.csv"
        path.write_text("code,sex,min_age,max_age,description,source\n" + "\n".join(rows)
                        + "\n", encoding="utf-8")
        started = time.perf_counter()
        big = DiagnosisRestriction(table=str(path))
        load_s = time.perf_counter() - started
    prefixes = [r.split(",", 1)[0].replace(".", "") for r in rows]
    vocabulary = sorted({random_code(rng, prefixes) for _ in range(args.codes * 2)})
    vocabulary = rng.sample(vocabulary, min(args.codes, len(vocabulary)))
    events = settlements(args.settlements, rng, lambda: tuple(
        rng.choice(vocabulary) for _ in range(rng.choice((1, 1, 2, 3)))))
    distinct = len({dx for e in events for dx in e.diagnoses})
    print(f"generated table ({len(big.table_for()):,} entries, loaded and checked in "
          f"{load_s:.2f} s), {distinct:,} distinct codes:")
    for label in ("first pass, memo cold", "second pass, memo warm"):
        per_s, alerts = rate(big, events)
        print(f"  {label}: {per_s:,.0f} settlements/s over {len(events):,} "
              f"({alerts:,} alerts)")

    table: KnowledgeTable = big.table_for()
    entries = [(e.code.replace(".", ""), e) for e in table.entries()]
    sample = events[:300]
    started = time.perf_counter()
    for event in sample:
        for dx in event.diagnoses:
            key = dx.replace(".", "")
            max((k for k, _ in entries if key.startswith(k)), key=len, default=None)
    naive = len(sample) / (time.perf_counter() - started)
    print(f"  for scale, a linear scan of the table: {naive:,.0f} settlements/s "
          f"(over {len(sample):,})")

    conflicts = [Settlement(**{**{f: getattr(e, f) for f in Settlement.__slots__},
                                "sex": "M", "diagnoses": ("O80",)}) for e in events]
    per_s, alerts = rate(shipped, conflicts)
    print(f"every settlement in conflict (alert building): {per_s:,.0f} settlements/s "
          f"over {len(conflicts):,} ({alerts:,} alerts)")


if __name__ == "__main__":
    main()
