"""Precision and recall of ``cross_province_surge`` and ``siphon_shift`` on the simulator.

    python bench/surge_quality.py                          # seeds 1-5, 125 days, scale 0.1
    python bench/surge_quality.py --seeds 1-10 --scale 0.25 --days 150
    python bench/surge_quality.py --param cross_province_surge.min_z=0 -v

Each seed's stream (``streams.simulate``) goes through the offline driver with both
rules (and the simulator's pool registry); the alerts that stand at the end are
compared with ``sim.truth``. The simulator injects both anomalies itself: a
cross-province surge at one hospital from an onset day (given five weeks of
baseline before it), and a siphon shift of one pool in the last full calendar month
that follows three full months (so none within about four months: with ``--days
60`` the siphon rule has nothing to find, and anything it raises is noise).

* **by subject** — per seed, the subjects alerted and the subjects the truth lists
  for the rule; precision = alerted subjects that are in the truth / alerted
  subjects, recall = truth subjects alerted / truth subjects;
* **by alert** — an alert is a true positive when its subject is in the truth and
  the span it judged (``evidence.current_window`` for the surge, the month for the
  siphon) overlaps the truth entry's window; precision = true-positive alerts /
  alerts, recall = truth entries matched by at least one alert / truth entries.

Counts are summed over the seeds before dividing (micro averages). The last column
is how many days after the truth's window start (the surge's onset, the first of
the siphon's month) each rule first raised an alert that judged the planted span,
by its ``detected_at`` (event time), over the seeds where it did. An alert on the
planted subject that judged only days before the onset (noise, before anything was
planted) is a false positive by alert, though not by subject.
"""
from __future__ import annotations

import sys
import time
from datetime import date, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import arguments, command_line, rule_params  # noqa: E402
from rules.builtin.cross_province_surge import CrossProvinceSurge  # noqa: E402
from rules.builtin.siphon_shift import SiphonShift  # noqa: E402
from rules.core import DetectionCore  # noqa: E402
from rules.registry import Registry  # noqa: E402
from streams.offline import OfflinePipeline  # noqa: E402
from streams.simulate import simulate  # noqa: E402

RULES = ("cross_province_surge", "siphon_shift")




def _overlaps(a: dict, b: dict) -> bool:
    def t(s: str) -> datetime:
        return datetime.fromisoformat(s)
    return t(a["start"]) < t(b["end"]) and t(b["start"]) < t(a["end"])


def judged_span(alert: dict) -> dict:
    """The span an alert judged: the surge's current 7 days, the siphon's month."""
    return alert["evidence"].get("current_window") or alert["window"]


def evaluate(alerts: list[dict], emitted: list[dict], truth: list[dict], rule_id: str) -> dict:
    """One seed, one rule: the counts precision and recall are made of."""
    mine = [a for a in alerts if a["rule_id"] == rule_id]
    facts = [t for t in truth if t.get("anomaly") == rule_id]
    truth_subjects = {t["subject"]["id"] for t in facts}
    alerted = {a["subject"]["id"] for a in mine}

    def hits(a: dict, t: dict) -> bool:
        return a["subject"]["id"] == t["subject"]["id"] and _overlaps(judged_span(a),
                                                                      t["window"])
    tp_alerts = sum(1 for a in mine if any(hits(a, t) for t in facts))
    found = sum(1 for t in facts if any(hits(a, t) for a in mine))
    lead = {}
    for t in facts:  # the first revision, in event time, that judged the planted span
        first = min((a["detected_at"] for a in emitted
                     if a["rule_id"] == rule_id and hits(a, t)), default=None)
        if first:
            onset = datetime.fromisoformat(t["window"]["start"])
            lead[t["subject"]["id"]] = round(
                (datetime.fromisoformat(first) - onset).total_seconds() / 86400, 1)
    return {"truth": len(facts), "alerts": len(mine), "tp_alerts": tp_alerts,
            "truth_found": found, "subjects": len(alerted),
            "tp_subjects": len(alerted & truth_subjects), "truth_subjects": len(truth_subjects),
            "false_subjects": sorted(alerted - truth_subjects), "lead_days": lead}


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f} ({a}/{b})" if b else "n/a (0/0)"


def run_seed(seed: int, days: int, scale: float, start: date,
             params: dict[str, dict]) -> tuple[dict, dict]:
    """Simulate one seed, replay it through both rules; (per-rule results, info)."""
    t0 = time.perf_counter()
    sim = simulate(days=days, seed=seed, start=start, scale=scale)
    registry = Registry.from_dict(sim.registry)
    core = DetectionCore([CrossProvinceSurge(registry=registry, **params[RULES[0]]),
                          SiphonShift(registry=registry, **params[RULES[1]])])
    pipeline = OfflinePipeline(core).feed_all(sim.events)
    alerts = sorted(pipeline.alerts.values(), key=lambda a: (a["rule_id"], a["window"]["start"],
                                                             a["subject"]["id"]))
    results = {r: evaluate(alerts, pipeline.emitted, sim.truth, r) for r in RULES}
    info = {"lines": len(sim.events), "seconds": time.perf_counter() - t0, "alerts": alerts,
            "truth": [t for t in sim.truth if t.get("anomaly") in RULES]}
    return results, info


def _print_detail(seed: int, info: dict) -> None:
    for rule_id in RULES:
        for t in info["truth"]:
            if t["anomaly"] == rule_id:
                print(f"  seed {seed} truth  {rule_id:<20} {t['subject']['id']:<16} "
                      f"{t['window']['start'][:10]} .. {t['window']['end'][:10]}  "
                      f"{orjson.dumps(t.get('expected', {})).decode()[:160]}")
        for a in info["alerts"]:
            if a["rule_id"] != rule_id:
                continue
            e, span = a["evidence"], judged_span(a)
            if rule_id == "cross_province_surge":
                what = (f"current {e['current']} vs baseline {e['baseline']} (ratio "
                        f"{e['ratio']}, z {e['z']}, {e['settlement_count']} settlements)")
            else:
                what = (f"share {e['current_share']} vs baseline {e['baseline_share']} "
                        f"({e['capital_stays']}/{e['stays']} stays, z {e['z']})")
            print(f"  seed {seed} alert  {rule_id:<20} {a['subject']['id']:<16} "
                  f"{span['start'][:10]} .. {span['end'][:10]}  {a['severity']:<8} {what} "
                  f"{a['review']} {a['regions']}")


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n\n")[0], "1-5", "cross_province_surge.min_z=0")
    args = ap.parse_args(argv)
    params = rule_params(ap, args, RULES)
    command = command_line("bench/surge_quality.py", args)
    print(f"$ {command}")
    totals = {r: {} for r in RULES}
    leads: dict[str, list[float]] = {r: [] for r in RULES}
    print(f"\n{'seed':>4}  {'lines':>7}  {'time':>6}  " + "  ".join(
        f"{r + ' alerts/TP/truth found':<40}" for r in RULES))
    for seed in args.seeds:
        results, info = run_seed(seed, args.days, args.scale, args.start, params)
        cells = []
        for r in RULES:
            res = results[r]
            for k, v in res.items():
                if isinstance(v, int):
                    totals[r][k] = totals[r].get(k, 0) + v
            leads[r] += list(res["lead_days"].values())
            extra = f" false: {','.join(res['false_subjects'])}" if res["false_subjects"] else ""
            cells.append(f"{res['alerts']:>3} / {res['tp_alerts']:>3} / "
                         f"{res['truth_found']}/{res['truth']}{extra}")
        print(f"{seed:>4}  {info['lines']:>7}  {info['seconds']:>5.1f}s  "
              + "  ".join(f"{c:<40}" for c in cells))
        if args.verbose:
            _print_detail(seed, info)
    print(f"\nover {len(args.seeds)} seeds (days={args.days}, scale={args.scale:g}); "
          "counts summed over the seeds\n")
    head = (f"{'rule':<22} {'precision by subject':<22} {'recall by subject':<20} "
            f"{'precision by alert':<20} {'recall by alert':<18} first alert, days after onset")
    print(head)
    print("-" * len(head))
    for r in RULES:
        t = totals[r]
        lead = sorted(leads[r])
        lead_s = (f"min {lead[0]:g}, median {lead[len(lead) // 2]:g}, max {lead[-1]:g}"
                  if lead else "-")
        print(f"{r:<22} {_ratio(t['tp_subjects'], t['subjects']):<22} "
              f"{_ratio(t['tp_subjects'], t['truth_subjects']):<20} "
              f"{_ratio(t['tp_alerts'], t['alerts']):<20} "
              f"{_ratio(t['truth_found'], t['truth']):<18} {lead_s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
