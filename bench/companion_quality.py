"""Precision and recall of the deterministic companions on the simulator's truth.

    python bench/companion_quality.py                     # seeds 1-10, 125 days, scale 0.1
    python bench/companion_quality.py --seeds 1-20 --scale 0.25
    python bench/companion_quality.py --param split_admission.max_gap_days=7 -v

Rules measured: ``overlapping_stay``, ``split_admission``, ``pharmacy_chain_anomaly``,
``unfiled_cross_region`` and the knowledge rule ``diagnosis_restriction`` (three
planted miscodings per seed: a delivery on a man's card, a prostate diagnosis on a
woman's bill, neonatal jaundice for an adult). Each seed's stream (``streams.simulate``) goes through
the offline driver with these rules (and the simulator's pool registry, so the chain
rule knows every branch); the alerts that stand at the end are compared with
``sim.truth``.

What the simulator plants (see ``streams.simulate``): for the person rules, cases of
several shapes, some subtle (one shared night, a nested stay, a cross-province pair,
a readmission on the day of discharge or on the last day of the 15-day reach, a
secondary diagnosis changed, the other diagnosis of the same category), and their
*look-alikes*, which the rules must leave alone (same-day transfers, readmissions
elsewhere, for another condition or after 16+ days, planned chemotherapy cycles, a
stay reversed (冲正) after the fact). For the chain rule: a chain inflating and
forging claims, one whose single province's branches inflate moderately, one that
bills harvested cards in two provinces with little change in volume — and as
look-alikes a chain in one province whose claims jump, and customers seen at a
chain's branches in two provinces days apart. The truth also lists, with
``"injected": false``, the readmissions the background care shows by itself (a
person readmitted to the same hospital for the same condition within 15 days is a
finding by definition, planted or not).

Matching: an alert is a true positive when its subject is in a truth entry of its
rule and the span it judged (``evidence.current_window`` for the chain, the alert's
window otherwise) overlaps the entry's window. An alert restated as withdrawn (its
stay reversed) is not standing. Counts are summed over the seeds (micro averages):

* precision = true-positive alerts / standing alerts;
* recall = truth entries (planted and incidental) matched by at least one alert /
  truth entries; ``planted`` = the same over the planted entries only;
* look-alikes alerted = look-alike entries for the rule on whose subject and window
  an alert stands (each is also a false positive).
"""
from __future__ import annotations

import sys
import time
from datetime import date, datetime
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import arguments, command_line, rule_params  # noqa: E402
from rules.builtin.diagnosis_restriction import DiagnosisRestriction
from rules.builtin.overlapping_stay import OverlappingStay
from rules.builtin.pharmacy_chain_anomaly import PharmacyChainAnomaly
from rules.builtin.split_admission import SplitAdmission
from rules.builtin.unfiled_cross_region import UnfiledCrossRegion
from rules.core import DetectionCore
from rules.registry import Registry
from streams.offline import OfflinePipeline
from streams.simulate import simulate

RULES = {"overlapping_stay": OverlappingStay, "split_admission": SplitAdmission,
         "pharmacy_chain_anomaly": PharmacyChainAnomaly,
         "unfiled_cross_region": UnfiledCrossRegion,
         "diagnosis_restriction": DiagnosisRestriction}




def _overlaps(a: dict, b: dict) -> bool:
    def t(s: str) -> datetime:
        return datetime.fromisoformat(s)
    # Closed on both ends when a span is one moment (a settlement's own alert).
    return t(a["start"]) <= t(b["end"]) and t(b["start"]) <= t(a["end"]) and (
        t(a["start"]) < t(b["end"]) and t(b["start"]) < t(a["end"])
        or a["start"] == a["end"] or b["start"] == b["end"])


def judged_span(alert: dict) -> dict:
    """The span an alert judged: the chain's current 7 days, else the alert's window."""
    return alert["evidence"].get("current_window") or alert["window"]


def standing(alert: dict) -> bool:
    return not alert["evidence"].get("withdrawn", False)


def evaluate(alerts: list[dict], truth: list[dict], rule_id: str) -> dict:
    """One seed, one rule: the counts precision and recall are made of.

    >>> t = {"anomaly": "split_admission", "subject": {"id": "P1"},
    ...      "window": {"start": "2025-03-01T00:00:00+08:00", "end": "2025-03-20T00:00:00+08:00"}}
    >>> a = {"rule_id": "split_admission", "subject": {"id": "P1"}, "evidence": {},
    ...      "window": {"start": "2025-03-02T00:00:00+08:00", "end": "2025-03-19T00:00:00+08:00"}}
    >>> r = evaluate([a, {**a, "subject": {"id": "P2"}}], [t], "split_admission")
    >>> r["alerts"], r["tp_alerts"], r["found"], r["truth"]
    (2, 1, 1, 1)
    """
    mine = [a for a in alerts if a["rule_id"] == rule_id and standing(a)]
    facts = [t for t in truth if t.get("anomaly") == rule_id]
    lookalikes = [t for t in truth if t.get("anomaly") == "lookalike"
                  and t.get("rule_id") == rule_id]

    def hits(a: dict, t: dict) -> bool:
        return a["subject"]["id"] == t["subject"]["id"] and _overlaps(judged_span(a),
                                                                      t["window"])
    matched = [t for t in facts if any(hits(a, t) for a in mine)]
    planted = [t for t in facts if t.get("injected", True)]
    return {"alerts": len(mine), "tp_alerts": sum(1 for a in mine if any(hits(a, t)
                                                                         for t in facts)),
            "truth": len(facts), "found": len(matched), "planted": len(planted),
            "planted_found": sum(1 for t in matched if t.get("injected", True)),
            "lookalikes": len(lookalikes),
            "lookalikes_alerted": sum(1 for t in lookalikes if any(hits(a, t) for a in mine)),
            "false": sorted({a["subject"]["id"] for a in mine
                             if not any(hits(a, t) for t in facts)}),
            "missed": sorted(t["subject"]["id"] for t in facts if t not in matched)}


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f} ({a}/{b})" if b else "n/a (0/0)"


def run_seed(seed: int, days: int, scale: float, start: date,
             params: dict[str, dict]) -> tuple[dict, dict]:
    """Simulate one seed and replay it through the rules; (per-rule results, info)."""
    t0 = time.perf_counter()
    sim = simulate(days=days, seed=seed, start=start, scale=scale)
    t1 = time.perf_counter()
    registry = Registry.from_dict(sim.registry)
    core = DetectionCore([cls(registry=registry, **params[r]) for r, cls in RULES.items()])
    pipeline = OfflinePipeline(core).feed_all(sim.events)
    pipeline.close_input()  # as `fundwatch replay`: the stream is complete, its last day too
    alerts = sorted(pipeline.alerts.values(), key=lambda a: (a["rule_id"], a["window"]["start"],
                                                             a["subject"]["id"]))
    results = {r: evaluate(alerts, sim.truth, r) for r in RULES}
    info = {"lines": len(sim.events), "simulate_s": t1 - t0,
            "replay_s": time.perf_counter() - t1, "alerts": alerts,
            "truth": [t for t in sim.truth if t.get("anomaly") in RULES
                      or t.get("rule_id") in RULES]}
    return results, info


def _print_detail(seed: int, info: dict) -> None:
    for t in info["truth"]:
        kind = t["anomaly"] if t["anomaly"] != "lookalike" else f"lookalike:{t['rule_id']}"
        flag = "" if t.get("injected", True) else " (incidental)"
        print(f"  seed {seed} truth  {kind:<34} {t['subject']['id']:<16} "
              f"{t['window']['start'][:10]} .. {t['window']['end'][:10]}{flag}  "
              f"{t.get('note', '')[:110]}")
    for a in info["alerts"]:
        span = judged_span(a)
        tag = "" if standing(a) else " withdrawn"
        print(f"  seed {seed} alert  {a['rule_id']:<34} {a['subject']['id']:<16} "
              f"{span['start'][:10]} .. {span['end'][:10]}  {a['severity']:<8}{tag} "
              f"{a['summary'][:120]}")


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n\n")[0], "1-10", "split_admission.max_gap_days=7")
    args = ap.parse_args(argv)
    params = rule_params(ap, args, RULES)
    command = command_line("bench/companion_quality.py", args)
    print(f"$ {command}")
    totals: dict[str, dict[str, int]] = {r: {} for r in RULES}
    short = {"overlapping_stay": "overlap", "split_admission": "split",
             "pharmacy_chain_anomaly": "chain", "unfiled_cross_region": "unfiled",
             "diagnosis_restriction": "dx"}
    print(f"\n{'seed':>4}  {'lines':>7}  {'sim':>5}  {'replay':>6}  " + "  ".join(
        f"{short[r] + ' alerts/TP/found/truth':<31}" for r in RULES))
    seconds = []
    for seed in args.seeds:
        results, info = run_seed(seed, args.days, args.scale, args.start, params)
        seconds.append(info["simulate_s"] + info["replay_s"])
        cells = []
        for r in RULES:
            res = results[r]
            for k, v in res.items():
                if isinstance(v, int):
                    totals[r][k] = totals[r].get(k, 0) + v
            extra = (f" FP:{','.join(res['false'])}" if res["false"] else "") + (
                f" miss:{','.join(res['missed'])}" if res["missed"] else "")
            cells.append(f"{res['alerts']:>3}/{res['tp_alerts']:>3}/{res['found']:>2}/"
                         f"{res['truth']:<2}{extra}")
        print(f"{seed:>4}  {info['lines']:>7}  {info['simulate_s']:>4.1f}s  "
              f"{info['replay_s']:>5.1f}s  " + "  ".join(f"{c:<31}" for c in cells))
        if args.verbose:
            _print_detail(seed, info)
    print(f"\nover {len(args.seeds)} seeds (days={args.days}, scale={args.scale:g}); "
          f"{sum(seconds) / len(seconds):.1f} s per seed (simulate + replay); counts summed "
          "over the seeds\n")
    head = (f"{'rule':<24} {'precision':<20} {'recall':<20} {'recall (planted)':<20} "
            f"look-alikes alerted")
    print(head)
    print("-" * len(head))
    for r in RULES:
        t = totals[r]
        print(f"{r:<24} {_ratio(t['tp_alerts'], t['alerts']):<20} "
              f"{_ratio(t['found'], t['truth']):<20} "
              f"{_ratio(t['planted_found'], t['planted']):<20} "
              f"{t['lookalikes_alerted']} of {t['lookalikes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
