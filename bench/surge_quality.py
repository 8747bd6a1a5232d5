"""Precision and recall of ``cross_province_surge`` and ``siphon_shift`` on the simulator.

    python bench/surge_quality.py                      # simulate(days=60, seed=7)
    python bench/surge_quality.py --days 150 --plant-siphon

The simulator's stream goes through the offline driver with both rules (and the
simulator's pool registry); the alerts that stand at the end are compared with
``sim.truth``:

* **by subject** — precision: alerted subjects that the truth lists for that rule
  / alerted subjects; recall: truth subjects alerted / truth subjects;
* **by alert** — an alert is a true positive when its subject is in the truth and
  the span it judged (``evidence.current_window`` for the surge, the month for the
  siphon) overlaps the truth entry's window; also how long after the truth's
  onset each rule first raised it (negative: before the planted onset, on noise).

The simulator injects a cross-province surge (one hospital, from the onset day)
but **no siphon shift**: its background sends a constant share of non-capital
inpatients to the capital. ``--plant-siphon`` plants one here: in the stream's last
full calendar month, a deterministic ~35% of one pool's local inpatient stays are
moved to a tertiary hospital of the capital (ids no other line refers to, so the
records stay valid), and a truth entry is added. The siphon rule needs three
baseline months before the month it judges: with ``--days 60`` it cannot fire.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from datetime import date, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.alerts import month_window
from rules.builtin.cross_province_surge import CrossProvinceSurge
from rules.builtin.siphon_shift import SiphonShift
from rules.core import DetectionCore
from rules.registry import Registry
from streams.offline import OfflinePipeline
from streams.simulate import simulate

RULES = ("cross_province_surge", "siphon_shift")


def plant_siphon(lines: list[bytes], registry: dict, pool: str = "440900:resident",
                 share: float = 0.35) -> tuple[list[bytes], dict | None]:
    """Move ``share`` of ``pool``'s local inpatient stays in the last full month to the
    capital's tertiary hospital; return the new lines and the truth entry."""
    region, insurance_type = pool.split(":")
    reg = Registry.from_dict(registry)
    capital = reg.capital_of(region)
    target = next((i for i in sorted(reg.institutions) if reg.institutions[i]["region"] == capital
                   and reg.institutions[i].get("level") == 3), None)
    if capital is None or target is None:
        return lines, None
    records: list[dict | None] = []
    seen: dict[str, int] = {}
    referenced: set[str] = set()
    for line in lines:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            records.append(None)
            continue
        records.append(rec)
        if isinstance(rec, dict) and rec.get("schema") == "settlement/v1":
            seen[rec.get("settlement_id")] = seen.get(rec.get("settlement_id"), 0) + 1
            if rec.get("reverses"):
                referenced.add(rec["reverses"])
    months = sorted({r["settled_at"][:7] for r in records
                     if isinstance(r, dict) and isinstance(r.get("settled_at"), str)})
    # The last month the stream covers from its 1st to its last day.
    full = [m for m in months if any(isinstance(r, dict) and str(r.get("settled_at", ""))
                                     .startswith(m + "-28") for r in records)]
    if not full:
        return lines, None
    month = full[-1]
    inst = reg.institutions[target]
    moved = []
    out = list(lines)
    for i, rec in enumerate(records):
        if not (isinstance(rec, dict) and rec.get("schema") == "settlement/v1"
                and rec.get("visit_type") == "inpatient" and rec.get("insured_region") == region
                and rec.get("insurance_type") == insurance_type
                and rec.get("treatment_region") == region and not rec.get("reverses")
                and str(rec.get("settled_at", "")).startswith(month)
                and seen.get(rec["settlement_id"]) == 1
                and rec["settlement_id"] not in referenced):
            continue
        h = int.from_bytes(hashlib.blake2b(rec["settlement_id"].encode(), digest_size=4)
                           .digest(), "big")
        if h / 2**32 >= share:
            continue
        out[i] = orjson.dumps({**rec, "treatment_region": capital, "institution_id": target,
                               "institution_type": "hospital", "institution_level": 3,
                               "chain_id": inst.get("chain_id"), "filing": "temporary"})
        moved.append(rec["settlement_id"])
    truth = {"anomaly": "siphon_shift", "subject": {"kind": "pool", "id": pool},
             "regions": [region, capital], "window": month_window(month),
             "settlement_ids": moved, "planted": True,
             "note": f"planted by bench/surge_quality.py: {len(moved)} of {pool}'s local "
                     f"inpatient stays in {month} moved to {target}"}
    return out, truth


def _overlaps(a: dict, b: dict) -> bool:
    def t(s: str) -> datetime:
        return datetime.fromisoformat(s)
    return t(a["start"]) < t(b["end"]) and t(b["start"]) < t(a["end"])


def evaluate(alerts: list[dict], emitted: list[dict], truth: list[dict], rule_id: str) -> dict:
    mine = [a for a in alerts if a["rule_id"] == rule_id]
    facts = [t for t in truth if t.get("anomaly") == rule_id]
    truth_subjects = {t["subject"]["id"] for t in facts}
    alerted = {a["subject"]["id"] for a in mine}
    tp_alerts = 0
    for a in mine:
        judged = a["evidence"].get("current_window") or a["window"]
        if any(a["subject"]["id"] == t["subject"]["id"] and _overlaps(judged, t["window"])
               for t in facts):
            tp_alerts += 1
    lead = {}
    for t in facts:
        first = min((a["detected_at"] for a in emitted if a["rule_id"] == rule_id
                     and a["subject"]["id"] == t["subject"]["id"]), default=None)
        if first:
            onset = datetime.fromisoformat(t["window"]["start"])
            lead[t["subject"]["id"]] = round(
                (datetime.fromisoformat(first) - onset).total_seconds() / 86400, 1)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 3) if b else None
    return {
        "truth_entries": len(facts), "alerts": len(mine), "alerted_subjects": sorted(alerted),
        "precision_by_subject": ratio(len(alerted & truth_subjects), len(alerted)),
        "recall_by_subject": ratio(len(alerted & truth_subjects), len(truth_subjects)),
        "precision_by_alert": ratio(tp_alerts, len(mine)),
        "days_from_onset_to_first_alert": lead,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", type=date.fromisoformat, default=date(2025, 3, 1))
    ap.add_argument("--plant-siphon", action="store_true",
                    help="plant a siphon shift in one pool's last full month (see above)")
    ap.add_argument("--param", action="append", default=[], metavar="RULE.NAME=VALUE",
                    help="a rule parameter, e.g. cross_province_surge.min_z=0 (repeatable)")
    args = ap.parse_args(argv)
    params: dict[str, dict] = {r: {} for r in RULES}
    for item in args.param:
        name, _, value = item.partition("=")
        rule_id, _, key = name.partition(".")
        params[rule_id][key] = orjson.loads(value)
    command = "python bench/surge_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command.strip()}")
    t0 = time.perf_counter()
    sim = simulate(days=args.days, seed=args.seed, start=args.start)
    lines, truth = list(sim.events), list(sim.truth)
    if args.plant_siphon:
        lines, planted = plant_siphon(lines, sim.registry)
        if planted:
            truth.append(planted)
            print(f"planted: {planted['note']}")
        else:
            print("planted: nothing (no full month, or no capital tertiary hospital)")
    registry = Registry.from_dict(sim.registry)
    core = DetectionCore([CrossProvinceSurge(registry=registry, **params[RULES[0]]),
                          SiphonShift(registry=registry, **params[RULES[1]])])
    pipeline = OfflinePipeline(core).feed_all(lines)
    elapsed = time.perf_counter() - t0
    alerts = sorted(pipeline.alerts.values(), key=lambda a: (a["rule_id"], a["window"]["start"],
                                                             a["subject"]["id"]))
    print(f"simulate(days={args.days}, seed={args.seed}): {len(lines)} lines, "
          f"{pipeline.counts['accepted']} accepted, {len(pipeline.emitted)} alert revisions, "
          f"{len(alerts)} alerts ({elapsed:.1f} s)")
    for rule_id in RULES:
        injected = sum(1 for t in truth if t.get("anomaly") == rule_id)
        print(f"\n{rule_id}: {injected} truth entr{'y' if injected == 1 else 'ies'}"
              + ("" if injected else " (the simulator injects none)"))
        for t in truth:
            if t.get("anomaly") == rule_id:
                print(f"  truth  {t['subject']['id']:<18} {t['window']['start'][:10]} .. "
                      f"{t['window']['end'][:10]}  {t.get('note', '')}")
        for a in alerts:
            if a["rule_id"] != rule_id:
                continue
            e = a["evidence"]
            judged = e.get("current_window") or a["window"]
            if rule_id == "cross_province_surge":
                what = (f"current {e['current']} vs baseline {e['baseline']} "
                        f"(ratio {e['ratio']}, {e['settlement_count']} settlements)")
            else:
                what = (f"share {e['current_share']} vs baseline {e['baseline_share']} "
                        f"({e['capital_stays']}/{e['stays']} stays, fund shifted "
                        f"{e['fund_shifted']})")
            print(f"  alert  {a['subject']['id']:<18} {judged['start'][:10]} .. "
                  f"{judged['end'][:10]}  {a['severity']:<8} {what} regions {a['regions']}")
        result = evaluate(alerts, pipeline.emitted, truth, rule_id)
        print("  " + orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
