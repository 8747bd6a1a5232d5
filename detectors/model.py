"""The online model that scores inpatient settlements for phantom bed occupancy.

One :class:`StayModel` learns and scores one settlement at a time (River's
``score_one`` then ``learn_one``: each settlement is judged by what came before
it, then taught). It wraps a River pipeline chosen by name (:data:`MODELS`), all
seeded, and keeps beside it what turns a score into a decision:

* a **warm-up**: no alarm before ``warmup`` settlements were scored (a young model
  finds everything unusual);
* an **adaptive threshold**: the ``quantile`` of the last 1,000 scores (River's
  ``stats.RollingQuantile``), from halfway through the warm-up — or a fixed
  ``threshold`` when one is configured;
* per feature, the running mean and variance of what it learned, so an alarm can
  say which features stood out (:meth:`StayModel.standouts`).

The state is plain Python (River estimators pickle): :meth:`checkpoint` and
:func:`restore` give a base64 string that a changelog-backed table can hold, and
a restored model continues exactly as one that never stopped. Nothing here reads
the clock or global random state: the same settlements in the same order with the
same seed give the same scores.

>>> from detectors.features import FEATURES
>>> m = StayModel("hst", seed=7, warmup=3, quantile=0.9)
>>> normal = dict({name: 0.0 for name in FEATURES}, length_of_stay=8.0, cost_per_day=900.0,
...               bed_share=0.25, exam_share=0.2, drug_share=0.4, age=60.0)
>>> for k in range(300):
...     x = dict(normal, length_of_stay=6.0 + k % 5, bed_share=0.2 + (k % 7) / 100)
...     _ = m.score_and_learn(x)
>>> odd = dict(normal, length_of_stay=30.0, bed_share=0.7, exam_share=0.02,
...            visits_elsewhere=3.0)
>>> m.score_one(odd) > m.score_one(normal)
True
>>> again = restore(m.checkpoint())
>>> again.score_and_learn(odd) == m.score_and_learn(odd)
True
>>> sorted(m.standouts(odd))
['bed_share', 'exam_share', 'length_of_stay', 'visits_elsewhere']
"""
from __future__ import annotations

import base64
import math
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from river import anomaly, preprocessing, stats

from detectors.features import model_input

BOUNDS_LOW = {"bed_nursing": 0.0, "care": 0.0, "drug": 0.0, "visits": 0.0,
              "visit_days": 0.0, "weekend_admit": 0.0}
BOUNDS_HIGH = {"bed_nursing": 1.0, "care": 1.0, "drug": 1.0, "visits": 5.0,
               "visit_days": 5.0, "weekend_admit": 1.0}


def _hst(seed: int):
    # HST wants features in [0, 1]: MinMaxScaler learns the ranges online.
    # A window of 50 rather than River's 250: HST scores nothing in its first
    # window, and one model per detect partition sees a fraction of the stays
    # (measured in bench/phantom_quality.py: height 6, window 50-100 ranked best).
    scaler = preprocessing.MinMaxScaler()
    # Features with natural bounds get them from the start: shares in [0, 1], counts
    # capped at 5, flags. Learned online, a range would start empty (a first stay
    # seen elsewhere would scale to 0 like all before it) and keep moving, while the
    # trees' masses stay where the old scale put them.
    scaler.learn_one(BOUNDS_LOW)
    scaler.learn_one(BOUNDS_HIGH)
    return scaler | anomaly.HalfSpaceTrees(n_trees=25, height=6, window_size=50, seed=seed)


def _svm(seed: int):
    # No randomness inside: the seed has nothing to drive.
    return preprocessing.StandardScaler() | anomaly.OneClassSVM(nu=0.1)


def _loda(seed: int):
    return preprocessing.StandardScaler() | anomaly.LODA(n_bins=10, n_random_cuts=100,
                                                         seed=seed)


def _lof(seed: int):
    return preprocessing.MinMaxScaler() | anomaly.LocalOutlierFactor(n_neighbors=20)


#: The River pipelines that can be chosen (``phantom_bed.model``); the bench
#: (``bench/phantom_quality.py``) compares them on the simulator's truth.
MODELS: dict[str, Callable[[int], object]] = {"hst": _hst, "svm": _svm, "loda": _loda,
                                              "lof": _lof}


@dataclass
class Decision:
    score: float
    threshold: float | None  # None while warming up
    alarm: bool


class StayModel:
    """A seeded River pipeline plus warm-up, threshold and feature statistics."""

    def __init__(self, kind: str = "hst", seed: int = 42, warmup: int = 500,
                 quantile: float = 0.99, threshold: float | None = None,
                 context: bool = False) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown model {kind!r}; known: {', '.join(MODELS)}")
        self.kind, self.seed, self.warmup = kind, seed, warmup
        self.fixed = threshold
        self.context = context  # feed level, beds, age, cross-region too (model_input)
        self.model = MODELS[kind](seed)
        # Exact over the last 1,000 scores: P² (stats.Quantile) took hundreds of stays
        # to climb from a young model's scores; a window also follows drift.
        self.quantile = stats.RollingQuantile(quantile, window_size=1000)
        self.n = 0  # settlements scored (and learned) so far
        self._mean: dict[str, float] = {}
        self._m2: dict[str, float] = {}

    def score_one(self, x: dict[str, float]) -> float:
        """The model's score of features ``x``, learning nothing (higher = more
        unusual)."""
        return float(self.model.score_one(model_input(x, self.context)))

    def score_and_learn(self, x: dict[str, float]) -> Decision:
        """Score ``x`` against what came before, decide, then learn it."""
        score = self.score_one(x)
        if self.n < self.warmup:
            threshold = None
        else:
            threshold = self.fixed if self.fixed is not None else self.quantile.get()
        alarm = threshold is not None and score > threshold
        if self.n >= self.warmup // 2:
            # A young model's scores are not those it gives later (HST scores 0
            # through its first window): the quantile starts halfway through warm-up.
            self.quantile.update(score)
        self._learn_stats(x)
        self.model.learn_one(model_input(x, self.context))
        self.n += 1
        return Decision(score, threshold, alarm)

    def _learn_stats(self, x: dict[str, float]) -> None:
        k = self.n + 1
        for name, value in x.items():  # Welford: exact enough, one pass, no history
            mean = self._mean.get(name, 0.0)
            delta = value - mean
            mean += delta / k
            self._mean[name] = mean
            self._m2[name] = self._m2.get(name, 0.0) + delta * (value - mean)

    def standouts(self, x: dict[str, float], min_z: float = 2.0, top: int = 4
                  ) -> dict[str, dict[str, float]]:
        """The features of ``x`` furthest from what the model learned, in standard
        deviations (at least ``min_z``): name → value, usual mean, z — most
        deviant first."""
        out = []
        for name, value in x.items():
            if self.n < 2 or name not in self._mean:
                continue
            sd = math.sqrt(self._m2[name] / (self.n - 1))
            mean = self._mean[name]
            z = (value - mean) / sd if sd > 0 else (0.0 if value == mean else math.inf)
            if abs(z) >= min_z:
                out.append((-abs(z), name, value, mean, z))
        out.sort()
        # z is None where the feature never varied before (a first visit elsewhere).
        return {name: {"value": round(value, 4), "mean": round(mean, 4),
                       "z": round(z, 2) if math.isfinite(z) else None}
                for _, name, value, mean, z in out[:top]}

    def checkpoint(self) -> str:
        """The whole model as text a JSON table can hold (pickle, zlib, base64)."""
        return base64.b64encode(zlib.compress(pickle.dumps(self, protocol=5), 6)).decode()


def restore(text: str) -> StayModel:
    """The model :meth:`StayModel.checkpoint` wrote. Only for checkpoints fundwatch
    wrote itself: unpickling runs code, so the table must not be writable by others."""
    return pickle.loads(zlib.decompress(base64.b64decode(text)))
