"""Standard (risk-adjusted) expenditure: what a stay should cost given who and how ill.

A least-squares regression of log(fund_paid) — and of log(total_cost) — on the
age-sex group (AGG), the hierarchical morbidity group (HMG, ``detectors.groups``)
and controls (the treating hospital's level, whether it is in a provincial
capital, the insurance type, and whether the stay was at home, elsewhere in the
province or in another province — the reimbursement share differs by policy), learned
one inpatient settlement at a time.

**How it learns.** Every regressor is an indicator, so a stay is fully described by
its *cell*: AGG, diagnosis category, severity, level, capital, insurance type, care. The
model keeps, per cell, the sufficient statistics of least squares — count, Σy, Σy²,
Σ yuan paid (and the same for total cost) — updated with each settlement in O(1).
At a month's close the normal equations are solved over the cells (weighted least
squares on cell means, which gives exactly the coefficients of ordinary least squares
on the individual stays). Measured against River's ``LinearRegression`` (SGD) on the
same stream (``bench/structural_quality.py``), this is exact where SGD still drifts
after a pass, needs no learning rate, and — since sums do not care about order — a
live worker and a replay hold the same model whatever order the records came in.
Logarithms are kept as integers (1e-4 units): the sums are exact, so a reversal
takes its stay out to the last digit.

**Retransformation** to yuan uses Duan's smearing estimate: predicted payment =
exp(x'β) × mean(exp(residual)), computed exactly from the cells (Σ over a cell of
exp(y) is its total paid).

>>> cells = {}
>>> for sex, age, dx, yuan in [("F", 70, "J18.9", 9000), ("F", 68, "J18.9", 11000),
...                             ("M", 40, "K35.8", 15000), ("M", 39, "K35.8", 13000),
...                             ("F", 70, "K35.8", 14000), ("M", 40, "J18.9", 10500)]:
...     add(cells, cell_of(sex, age, [dx], 2, False, "employee"), yuan * 100, yuan * 125)
>>> fit = solve(cells, bins={"J18": 1, "K35": 5})
>>> fit.n, round(fit.r2["fund_paid"], 3)
(6, 0.833)
>>> round(fit.predicted_fen(cell_of("F", 70, ["J18.9"], 2, False, "employee")) / 100)
10070
"""
from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping

import numpy as np
import orjson
from threadpoolctl import ThreadpoolController

from detectors.groups import agg, category, chapter, severity

#: Logarithms are summed as integers in these units (exact, order-free sums).
LOG_UNITS = 10_000

# Statistics of a cell: count, Σ log fund_paid, Σ (log fund_paid)², Σ fund_paid (fen),
# Σ log total_cost, Σ (log total_cost)², Σ total_cost (fen). Logs in LOG_UNITS.
N, SY, SYY, PAID, SYC, SYYC, COST = range(7)
TARGETS = {"fund_paid": (SY, SYY, PAID), "total_cost": (SYC, SYYC, COST)}

# NumPy's BLAS, to be held to one thread while a model is solved. Its threads cost
# more than they give on designs of a few thousand cells by a few hundred columns:
# measured on 2 cores (78 solves of a replay), 5.7 s with its default two threads
# against 1.9 s with one. A worker is one process per core anyway.
BLAS = ThreadpoolController()


#: Where the stay was, as the reimbursement rules see it (a filed or unfiled stay away
#: from home is paid at a lower share: policy, not the pool's management).
CARE = ("home", "province", "away")


def cell_of(sex: str, age: int, diagnoses: Iterable[str] | None, level, capital: bool,
            insurance_type: str, care: str = "home") -> str:
    """``AGG|category|severity|level|capital|insurance type|care`` of a stay."""
    diagnoses = list(diagnoses or ())
    primary = diagnoses[0] if diagnoses else None
    return (f"{agg(sex, age)}|{category(primary)}|{severity(diagnoses)}|{level}|"
            f"{int(bool(capital))}|{insurance_type}|{care}")


def log_units(fen: int) -> int:
    return round(math.log(fen) * LOG_UNITS)


def add(cells: dict, cell: str, paid_fen: int, cost_fen: int, sign: int = 1) -> None:
    """Count one stay into ``cells`` (sign −1 takes a reversed one out). Stays the
    fund paid nothing for have no logarithm: the caller counts them apart."""
    y, yc = log_units(paid_fen), log_units(cost_fen)
    stats = cells.get(cell) or [0] * 7
    cells[cell] = [stats[N] + sign, stats[SY] + sign * y, stats[SYY] + sign * y * y,
                   stats[PAID] + sign * paid_fen, stats[SYC] + sign * yc,
                   stats[SYYC] + sign * yc * yc, stats[COST] + sign * cost_fen]


def merge(into: dict, cells: Mapping[str, list]) -> dict:
    """``into`` with ``cells`` added, cell by cell (a new dict)."""
    out = dict(into)
    for cell, stats in cells.items():
        old = out.get(cell)
        out[cell] = list(stats) if old is None else [a + b for a, b in zip(old, stats)]
    return out


def pack(cells: Mapping[str, list]) -> str:
    """Cells as one compact string (sorted, so the same cells give the same text
    whatever order they were counted in): a province's cumulative cells are the
    largest thing the rule keeps, and every write of its state goes to the
    changelog."""
    return base64.b64encode(zlib.compress(orjson.dumps(
        cells, option=orjson.OPT_SORT_KEYS), 6)).decode("ascii")


def unpack(text: str | None) -> dict:
    """Cells from :func:`pack`.

    >>> unpack(pack({"b": [1, 2], "a": [3, 4]}))
    {'a': [3, 4], 'b': [1, 2]}
    """
    return orjson.loads(zlib.decompress(base64.b64decode(text))) if text else {}


def subtract(whole: Mapping[str, list], part: Mapping[str, list]) -> dict:
    """``whole`` without ``part`` (cells left with no stay are dropped)."""
    out = dict(whole)
    for cell, stats in part.items():
        left = [a - b for a, b in zip(out.get(cell) or [0] * 7, stats)]
        if left[N]:
            out[cell] = left
        else:
            out.pop(cell, None)
    return out


def hmg_of(cell: str, bins: Mapping[str, int]) -> str:
    _, cat, sev, *_ = cell.split("|")
    return f"{chapter(cat)}.{bins.get(cat, 0)}.{sev}"


def agg_of(cell: str) -> str:
    return cell.split("|", 1)[0]


def category_costs(cells: Mapping[str, list]) -> dict[str, list]:
    """category → [stays, total cost in fen]: what the morbidity bins are made from."""
    out: dict[str, list] = {}
    for cell, stats in cells.items():
        cat = cell.split("|")[1]
        n, cost = out.get(cat, (0, 0))
        out[cat] = [n + stats[N], cost + stats[COST]]
    return out


#: The regressors, in the order :func:`factors` gives them and the columns follow.
FACTORS = ("agg", "hmg", "level", "capital", "insurance", "care")


def factors(cell: str, bins: Mapping[str, int]) -> dict[str, str]:
    """The regressors of a cell, as factor → level (in :data:`FACTORS` order)."""
    group, _, _, level, capital, insurance, care = cell.split("|")
    return {"agg": group, "hmg": hmg_of(cell, bins), "level": level,
            "capital": capital, "insurance": insurance, "care": care}


class CellFactors:
    """Each cell's regressors under one binning, worked out once and numbered: a
    month's close solves the province's model and one model per pool over the same
    cells and bins (measured: working the factors out again for every solve was a
    quarter of the close). A cell's levels are numbers into ``levels`` (factor,
    level), in :data:`FACTORS` order.

    >>> of = CellFactors({"J18": 2})
    >>> of("F:66-70|J18|1|2|0|employee|home"), of("M:66-70|J18|1|2|0|employee|home")
    ((0, 1, 2, 3, 4, 5), (6, 1, 2, 3, 4, 5))
    >>> of.levels[:2], of.levels[6]
    ([('agg', 'F:66-70'), ('hmg', 'X.2.1')], ('agg', 'M:66-70'))
    """

    def __init__(self, bins: Mapping[str, int]) -> None:
        self.bins = dict(bins)
        self.levels: list[tuple[str, str]] = []
        self._number: dict[tuple[str, str], int] = {}
        self._of: dict[str, tuple[int, ...]] = {}

    def __call__(self, cell: str) -> tuple[int, ...]:
        found = self._of.get(cell)
        if found is None:
            found = self._of[cell] = tuple(self._numbered(item) for item in
                                           factors(cell, self.bins).items())
        return found

    def _numbered(self, level: tuple[str, str]) -> int:
        k = self._number.get(level)
        if k is None:
            k = self._number[level] = len(self.levels)
            self.levels.append(level)
        return k


@dataclass
class Fit:
    """The solved model: coefficients per target, R², smearing factors."""

    bins: dict[str, int]
    columns: list[str]  # "agg=F:66-70", "hmg=X.3.1", … (reference levels left out)
    references: dict[str, str]  # factor → its reference level (in the intercept)
    beta: dict[str, np.ndarray]  # target → coefficients, in ``columns`` order
    r2: dict[str, float]
    smear: dict[str, float]
    n: int
    residual_sd: dict[str, float] = field(default_factory=dict)

    def row(self, cell: str) -> np.ndarray:
        x = np.zeros(len(self.columns))
        x[0] = 1.0
        index = self._index
        for factor, level in factors(cell, self.bins).items():
            k = index.get(f"{factor}={level}")
            if k is not None:
                x[k] = 1.0
        return x

    @cached_property
    def _index(self) -> dict[str, int]:
        # Built once: a month's close predicts every cell of every pool.
        return {name: k for k, name in enumerate(self.columns)}

    def log_prediction(self, cell: str, target: str = "fund_paid") -> float:
        """x'β of a cell, natural log of fen."""
        return float(self.row(cell) @ self.beta[target])

    def predicted_fen(self, cell: str, target: str = "fund_paid") -> float:
        """The structural expectation of one stay of the cell, in fen."""
        return self.fen_of_log(self.log_prediction(cell, target), target)

    def fen_of_log(self, log_prediction: float, target: str = "fund_paid") -> float:
        """A stay's expectation in fen from its log prediction (smeared back: the mean
        of exp is not exp of the mean), for callers that need both."""
        return math.exp(log_prediction) * self.smear[target]

    def coefficients(self, target: str = "fund_paid") -> dict[str, float]:
        return {name: round(float(b), 6) for name, b in zip(self.columns, self.beta[target])}


def solve(cells: Mapping[str, list], bins: Mapping[str, int], ridge: float = 0.0,
          factors_of: CellFactors | None = None) -> Fit | None:
    """Least squares over the cells (None with no stay to learn from). Each factor's
    most frequent level is the reference (ties: the first by name); columns never
    observed are left out; a rank-deficient design gets the minimum-norm solution,
    whose predictions are those of any least-squares solution.

    ``ridge`` > 0 adds λ·Σβ² (intercept free): a group seen in a handful of stays is
    pulled toward its reference instead of taking their noise for its effect — a
    province with few stays per group (or a pool measured against the others only)
    needs it. λ is in stays: a group with n stays keeps about n/(n+λ) of its own
    mean difference.

    ``factors_of``: the cells' factors under these ``bins``, kept between the solves
    of one close (see :class:`Design` for solving many models over the same cells)."""
    if factors_of is None:
        factors_of = CellFactors(bins)
    elif factors_of.bins != dict(bins):
        raise ValueError("factors_of was made for other bins")
    return Design(cells, factors_of).fit(ridge)


class Design:
    """Cells as arrays — each cell's levels and statistics — with their normal
    equations over every level: X'WX (a sum of stay counts, exact in floating point)
    and X'Wȳ. Any model over the cells is then a choice of columns of these; and the
    cells less a subset of them (a province without one of its pools) are the
    difference of the two, so a month's close builds the province's once and each
    pool's from its own cells only. Measured on a close of 12 pools over 11,214 cells
    by 144 columns: 0.14 s for its 13 models, where decomposing each design (and
    working out every cell's factors again for each) made most of a 2.45 s close.

    >>> cells = {}
    >>> for sex, age, dx, yuan in [("F", 70, "J18.9", 9000), ("F", 68, "J18.9", 11000),
    ...                             ("M", 40, "K35.8", 15000), ("M", 39, "K35.8", 13000),
    ...                             ("F", 70, "K35.8", 14000), ("M", 40, "J18.9", 10500)]:
    ...     add(cells, cell_of(sex, age, [dx], 2, False, "employee"), yuan * 100, yuan * 125)
    >>> of = CellFactors({"J18": 1, "K35": 5})
    >>> province = Design(cells, of)
    >>> one = {c: s for c, s in cells.items() if c.startswith("M:36-40|K35")}
    >>> others = province.less(Design(one, of)).fit()
    >>> others.n, others.columns == solve(subtract(cells, one), of.bins).columns
    (4, True)
    """

    def __init__(self, cells: Mapping[str, list], factors_of: CellFactors,
                 _arrays: tuple | None = None) -> None:
        self.factors_of = factors_of
        if _arrays is not None:
            self.cells, self.full, self.stats, self.gram, self.moments = _arrays
            return
        rows = sorted((cell, stats) for cell, stats in cells.items() if stats[N] > 0)
        self.cells = [cell for cell, _ in rows]
        numbers = np.array([factors_of(cell) for cell in self.cells],
                           dtype=np.intp).reshape(len(rows), len(FACTORS))
        self.stats = np.array([s for _, s in rows], dtype=float).reshape(len(rows), 7)
        # Each cell's columns of the full design: the intercept (column 0) and its
        # levels (column k + 1 is level k of factors_of.levels). Shared by the
        # designs ``less`` makes of these cells.
        self.full = full = np.column_stack([np.zeros(len(rows), dtype=np.intp), numbers + 1])
        size = len(factors_of.levels) + 1
        per_row = full.shape[1]
        pairs = (full[:, :, None] * size + full[:, None, :]).ravel()
        self.gram = np.bincount(pairs, weights=np.repeat(self.stats[:, N], per_row ** 2),
                                minlength=size * size).reshape(size, size)
        sums = self.stats[:, [sy for sy, _, _ in TARGETS.values()]] / LOG_UNITS
        self.moments = np.column_stack([
            np.bincount(full.ravel(), weights=np.repeat(sums[:, t], per_row), minlength=size)
            for t in range(len(TARGETS))]).reshape(size, len(TARGETS))

    @cached_property
    def position(self) -> dict[str, int]:
        """cell → its row (kept: a close takes every pool's cells out of the province's)."""
        return {cell: i for i, cell in enumerate(self.cells)}

    def less(self, part: Design) -> Design:
        """These cells without ``part``'s (each of which must be among them)."""
        if part.factors_of is not self.factors_of:
            raise ValueError("the two designs number their levels apart")
        stats = self.stats.copy()
        try:
            stats[[self.position[cell] for cell in part.cells]] -= part.stats
        except KeyError as exc:
            raise ValueError(f"cell {exc.args[0]} is not among these cells") from None
        size = max(len(self.gram), len(part.gram))
        return Design({}, self.factors_of, (
            self.cells, self.full, stats,
            _grown(self.gram, size, True) - _grown(part.gram, size, True),
            _grown(self.moments, size, False) - _grown(part.moments, size, False)))

    def fit(self, ridge: float = 0.0) -> Fit | None:
        """The least-squares model of these cells (see :func:`solve`)."""
        gram = self.gram
        n = int(gram[0, 0])  # the intercept's own entry: the stays
        if n <= 0:
            return None
        stays = gram[0, 1:]  # the intercept's row: stays per level
        observed: dict[str, list[tuple[str, int]]] = {}
        for k in np.flatnonzero(stays > 0):
            factor, level = self.factors_of.levels[k]
            observed.setdefault(factor, []).append((level, k))
        references = {factor: min(observed[factor], key=lambda seen: (-stays[seen[1]],
                                                                       seen[0]))[0]
                      for factor in FACTORS if factor in observed}
        columns, chosen = ["const"], [0]
        for factor, reference in references.items():
            for level, k in sorted(observed[factor]):
                if level != reference:
                    columns.append(f"{factor}={level}")
                    chosen.append(k + 1)
        fit = Fit(dict(self.factors_of.bins), columns, references, {}, {}, {}, n)
        with BLAS.limit(limits=1, user_api="blas"):
            self._solve(fit, np.array(chosen, dtype=np.intp), ridge)
        return fit

    def _solve(self, fit: Fit, chosen: np.ndarray, ridge: float) -> None:
        """Each target's coefficients, R², residual SD and smearing factor into ``fit``
        (``chosen``: the full design's columns of ``fit.columns``)."""
        system = self.gram[np.ix_(chosen, chosen)]
        rank = int(np.linalg.matrix_rank(system, hermitian=True))  # the design's rank
        if ridge > 0:
            free = np.arange(1, len(chosen))
            system[free, free] += ridge
        betas, *_ = np.linalg.lstsq(system, self.moments[chosen], rcond=None)
        # Levels left out (references, unobserved) add nothing to a cell's prediction.
        full_betas = np.zeros((len(self.gram), len(TARGETS)))
        full_betas[chosen] = betas
        fitted_all = full_betas[self.full].sum(axis=1)
        stats, n = self.stats, self.stats[:, N]
        for t, (target, (sy, syy, total)) in enumerate(TARGETS.items()):
            sums, squares = stats[:, sy] / LOG_UNITS, stats[:, syy] / LOG_UNITS ** 2
            fitted = fitted_all[:, t]
            ssr = float(np.sum(squares - 2 * fitted * sums + n * fitted ** 2))
            sst = float(np.sum(squares) - np.sum(sums) ** 2 / fit.n)
            fit.beta[target] = betas[:, t]
            fit.r2[target] = 1 - ssr / sst if sst > 0 else 0.0
            fit.residual_sd[target] = math.sqrt(max(ssr, 0.0) / max(1, fit.n - rank))
            # Duan's smearing: mean over stays of exp(y − x'β) = Σ_cells e^(−x'β) Σ e^y / N.
            fit.smear[target] = float(np.sum(np.exp(-fitted) * stats[:, total]) / fit.n)


def _grown(matrix: np.ndarray, size: int, square: bool) -> np.ndarray:
    """``matrix`` padded with zeros to ``size`` rows (and columns, if ``square``):
    levels numbered after it was built, which its cells do not have."""
    pad = size - len(matrix)
    if pad == 0:
        return matrix
    return np.pad(matrix, ((0, pad), (0, pad) if square else (0, 0)))
