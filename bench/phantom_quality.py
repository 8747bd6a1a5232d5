"""How well ``phantom_bed`` ranks and flags the simulator's phantom stays, and its cost.

    python bench/phantom_quality.py                         # seeds 1-5, 125 days, scale 0.25
    python bench/phantom_quality.py --seeds 1-20 --models hst,svm,loda
    python bench/phantom_quality.py --models lof --seeds 1-2  # slow: LOF keeps every stay
    python bench/phantom_quality.py --param phantom_bed.quantile=0.99 --partitions 1

Each seed's stream (``streams.simulate``: the five blatant phantom stays of the
original plan plus about 2% of the stays in five quieter shapes, see
``Simulation._inject_phantoms``) goes through the offline driver — the live worker's
stages over memory — with ``phantom_bed`` alone, the simulator's pool registry and
``--partitions`` detect partitions (one model each, as live workers keep them).
What it scored is compared with ``sim.truth``:

* **ROC AUC** and **average precision** of the scores (every scored stay; the
  phantom stays are the positives) over all seeds' scores pooled, the worst seed's
  AUC, and both again over the stays scored once their partition's model was past
  its warm-up (**warm**: the stays it may alert on; a young model's scores — HST's
  are 0 through its first window — are not what it gives later);
* **by shape** — the AUC of each shape's phantoms against all ordinary stays;
* **alerts** — precision = alerts on planted stays / alerts, recall = planted stays
  alerted / planted stays (a stay scored during a model's warm-up cannot alert; the
  recall counts it missed all the same);
* **µs per scored stay** — wall-clock time inside the rule's scoring (features from
  the person's history, the model's score and learning, threshold, checkpointing),
  divided by the stays scored (CPU time of this machine, shared: a range, not a
  constant).

Counts are summed over seeds before dividing (micro averages).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import arguments, command_line, rule_params  # noqa: E402
from rules.builtin.phantom_bed import PhantomBed  # noqa: E402
from rules.core import DetectionCore, partition_of  # noqa: E402
from rules.registry import Registry  # noqa: E402
from streams.offline import OfflinePipeline  # noqa: E402
from streams.simulate import simulate  # noqa: E402




def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """The probability that a random positive scores above a random negative (ties
    count one half): the Mann-Whitney statistic, exact.

    >>> roc_auc([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.75
    >>> roc_auc([0.5, 0.5], [True, False])
    0.5
    """
    pairs = sorted(zip(scores, labels, strict=True))
    rank_sum, i, n = 0.0, 0, len(pairs)
    while i < n:
        j = i
        while j + 1 < n and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid = (i + j) / 2 + 1  # tied scores share their mean rank
        rank_sum += mid * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    pos = sum(labels)
    neg = n - pos
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg) if pos and neg else float("nan")


def average_precision(scores: list[float], labels: list[bool]) -> float:
    """Mean of the precision at each positive's rank (highest score first; ties in
    the order given — scores here are floats, ties among positives and negatives are
    rare).

    >>> average_precision([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.8333333333333333
    """
    ranked = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    hits, total = 0, 0.0
    for k, (_, positive) in enumerate(ranked, 1):
        if positive:
            hits += 1
            total += hits / k
    return total / hits if hits else float("nan")


def run_seed(seed: int, days: int, scale: float, partitions: int, params: dict) -> dict:
    sim = simulate(days=days, seed=seed, scale=scale)
    registry = Registry.from_dict(sim.registry)
    truth = {t["subject"]["id"]: t.get("shape", "blatant") for t in sim.truth
             if t["anomaly"] == "phantom_bed"}
    rule = PhantomBed(registry=registry, **params)
    spent = [0.0]
    scoring = rule.close_shared

    def timed(*args):
        t0 = time.perf_counter()
        try:
            return scoring(*args)
        finally:
            spent[0] += time.perf_counter() - t0

    rule.close_shared = timed
    pipeline = OfflinePipeline(DetectionCore([rule], books=[], partitions=partitions))
    pipeline.feed_all(sim.events)
    pipeline.close_input()
    scores = {s["settlement_id"]: s["scores"]["phantom_bed"] for s in pipeline.scores}
    alerted = {a["subject"]["id"] for a in pipeline.alerts.values()}
    # Which stays each partition's model scored once warm (it may alert from then on).
    person = {}
    for raw in sim.events:
        try:
            record = orjson.loads(raw)
            person[record["settlement_id"]] = record["person_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    seen: dict[int, int] = defaultdict(int)
    warm = set()
    for s in pipeline.scores:
        shard = partition_of(f"person:{person[s['settlement_id']]}".encode(), partitions)
        if seen[shard] >= rule.p["warmup"]:
            warm.add(s["settlement_id"])
        seen[shard] += 1
    return {"truth": truth, "scores": scores, "alerted": alerted, "seconds": spent[0],
            "warm": warm}


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n")[0], "1-5", "phantom_bed.quantile=0.99")
    ap.set_defaults(scale=0.25)
    ap.add_argument("--partitions", type=int, default=4,
                    help="detect partitions (one model each), as FUNDWATCH_PARTITIONS")
    ap.add_argument("--models", default="hst,svm,loda",
                    help="the phantom_bed.model values to compare (hst, svm, loda, lof)")
    args = ap.parse_args(argv)
    params = rule_params(ap, args, ["phantom_bed"])["phantom_bed"]
    print(f"$ {command_line('bench/phantom_quality.py', args)} --partitions "
          f"{args.partitions} --models {args.models}")
    print(f"phantom_bed on seeds {args.seeds[0]}..{args.seeds[-1]} ({len(args.seeds)}), "
          f"{args.days} days, scale {args.scale}, {args.partitions} partition(s), "
          f"params {params or 'default'}")
    rows = []
    for model in args.models.split(","):
        pooled_s, pooled_l, aucs, aps, warm_s, warm_l = [], [], [], [], [], []
        by_shape: dict[str, list[float]] = defaultdict(list)
        negatives: list[float] = []
        tp = fp = planted = caught = scored = 0
        seconds = 0.0
        for seed in args.seeds:
            r = run_seed(seed, args.days, args.scale, args.partitions,
                         {**params, "model": model})
            ids = sorted(r["scores"])
            s = [r["scores"][i] for i in ids]
            lab = [i in r["truth"] for i in ids]
            aucs.append(roc_auc(s, lab))
            aps.append(average_precision(s, lab))
            pooled_s += s
            pooled_l += lab
            warm_s += [r["scores"][i] for i in ids if i in r["warm"]]
            warm_l += [i in r["truth"] for i in ids if i in r["warm"]]
            for i in ids:
                (by_shape[r["truth"][i]] if i in r["truth"] else negatives).append(
                    r["scores"][i])
            tp += len(r["alerted"] & set(r["truth"]))
            fp += len(r["alerted"] - set(r["truth"]))
            planted += sum(1 for i in r["truth"] if i in r["scores"])
            caught += len(r["alerted"] & set(r["truth"]))
            scored += len(ids)
            seconds += r["seconds"]
            if args.verbose:
                print(f"  {model} seed {seed}: AUC {aucs[-1]:.3f}  AP {aps[-1]:.3f}  "
                      f"{len(ids)} stays, {sum(lab)} planted, {len(r['alerted'])} alerts")
        shapes = {shape: roc_auc(v + negatives, [True] * len(v) + [False] * len(negatives))
                  for shape, v in sorted(by_shape.items())}
        rows.append((model, roc_auc(pooled_s, pooled_l), average_precision(pooled_s, pooled_l),
                     min(aucs), roc_auc(warm_s, warm_l), average_precision(warm_s, warm_l),
                     tp, fp, caught, planted, seconds / max(scored, 1) * 1e6, scored,
                     len(warm_s), shapes))

    print()
    print(f"{'model':6} {'ROC AUC':>8} {'(min seed)':>10} {'AP':>6}  {'warm AUC':>8} "
          f"{'warm AP':>7}  {'alert precision':>18} {'alert recall':>16} {'µs/stay':>8} "
          f"{'stays (warm)':>14}")
    for (model, auc, ap, worst, wauc, wap, tp, fp, caught, planted, us, scored, nwarm,
         _) in rows:
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = caught / planted if planted else float("nan")
        print(f"{model:6} {auc:8.3f} {worst:10.3f} {ap:6.3f}  {wauc:8.3f} {wap:7.3f}  "
              f"{precision:6.3f} ({tp:3}/{tp + fp:3})    {recall:6.3f} ({caught:3}/{planted:3})"
              f" {us:8.0f} {scored:7} ({nwarm})")
    print()
    print("ROC AUC by shape (its phantom stays against every ordinary stay):")
    for model, *_, shapes in rows:
        print(f"  {model:6} " + "  ".join(f"{k} {v:.3f}" for k, v in shapes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
