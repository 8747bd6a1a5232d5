"""Risk groups of an inpatient stay: who the patient is, and how ill.

The structural-risk method (``../shared/DESIGN.md``, "Structural versus management
risk") explains a stay's cost by groups an insurer cannot manage, so that what is
left over is the pool's management:

* **AGG** — age-sex group: sex × 20 age bands (0–5, 6–10, …, 91–95, 96+), 40 groups,
  written ``F:06-10``, ``M:96+``.
* **DG** — diagnosis group: the ICD-10 chapter of the primary diagnosis (``IX`` for
  I00–I99, …); a missing or unrecognised code is its own group, ``?``.
* **MG** — morbidity group: the primary diagnosis's *category* (its first three
  characters, ``J18``) binned into cost quintiles within its DG, by the category's
  mean total cost **in months already judged** — never by the stay's own cost,
  which would be circular. Bins are recomputed at every month's close
  (:func:`bin_categories`). A category with too few stays before (or none) has no
  quintile yet: MG 0.
* **HMG** — hierarchical morbidity group: MG × severity, severity 1 when a second or
  third diagnosis is present. Written ``<DG>.<MG>.<severity>``, e.g. ``X.4.1``.

>>> agg("F", 7), agg("M", 0), agg("M", 95), agg("F", 96)
('F:06-10', 'M:00-05', 'M:91-95', 'F:96+')
>>> chapter("J18.9"), chapter("C34.1"), chapter("D64.9"), chapter("H66.9"), chapter(None)
('X', 'II', 'III', 'VIII', '?')
>>> category("J18.9"), category("not a code"), severity(["J18.9"]), severity(["J18.9", "I10"])
('J18', '?', 0, 1)
>>> bins = bin_categories({"J18": [40, 40 * 700000], "J44": [30, 30 * 1100000],
...                        "J06": [50, 50 * 300000], "J45": [2, 2 * 500000]}, min_cases=5)
>>> bins   # within chapter X: three categories with enough stays, ranked by mean cost
{'J06': 1, 'J18': 3, 'J44': 5}
>>> hmg("J45.9", ["J45.9", "I10"], bins), hmg("J44.1", ["J44.1"], bins)
('X.0.1', 'X.5.0')
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Mapping

QUINTILES = 5

# ICD-10 chapters by the first three characters of a code: (first, last, chapter).
_CHAPTERS = (
    ("A00", "B99", "I"), ("C00", "D48", "II"), ("D50", "D89", "III"), ("E00", "E90", "IV"),
    ("F00", "F99", "V"), ("G00", "G99", "VI"), ("H00", "H59", "VII"), ("H60", "H95", "VIII"),
    ("I00", "I99", "IX"), ("J00", "J99", "X"), ("K00", "K93", "XI"), ("L00", "L99", "XII"),
    ("M00", "M99", "XIII"), ("N00", "N99", "XIV"), ("O00", "O99", "XV"), ("P00", "P96", "XVI"),
    ("Q00", "Q99", "XVII"), ("R00", "R99", "XVIII"), ("S00", "T98", "XIX"),
    ("V01", "Y98", "XX"), ("Z00", "Z99", "XXI"), ("U00", "U99", "XXII"),
)
_CATEGORY = re.compile(r"^[A-Z][0-9]{2}")
UNKNOWN = "?"


def age_band(age: int) -> int:
    """0 for 0–5, 1 for 6–10, …, 18 for 91–95, 19 for 96 and over."""
    return 0 if age <= 5 else min(19, (age - 1) // 5)


def agg(sex: str, age: int) -> str:
    band = age_band(age)
    if band == 19:
        return f"{sex}:96+"
    low = 0 if band == 0 else band * 5 + 1
    return f"{sex}:{low:02d}-{band * 5 + 5:02d}"


def category(code: str | None) -> str:
    """The ICD-10 category (three characters) of a code, or ``?``."""
    match = _CATEGORY.match((code or "").upper())
    return match.group(0) if match else UNKNOWN


def chapter(code: str | None) -> str:
    """The ICD-10 chapter (roman numeral) of a code or category, or ``?``."""
    cat = category(code)
    for first, last, name in _CHAPTERS:
        if first <= cat <= last:
            return name
    return UNKNOWN


def severity(diagnoses: Iterable[str] | None) -> int:
    """1 when a second or third diagnosis is present."""
    return 1 if len(list(diagnoses or ())) > 1 else 0


def bin_categories(costs: Mapping[str, list], min_cases: int) -> dict[str, int]:
    """Cost quintile (1..5) of each category within its chapter, from ``costs``:
    category → [stays, total cost in fen] of the months already judged. Categories
    with fewer than ``min_cases`` stays are left out (MG 0). Ranked by mean cost
    (ties by name), the k-th of n categories of a chapter goes to quintile
    ⌊5k/n⌋ + 1: with five or fewer categories each has its own."""
    by_chapter: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for cat, (n, cost) in costs.items():
        if n >= min_cases and cat != UNKNOWN:
            by_chapter[chapter(cat)].append((cost / n, cat))
    bins = {}
    for ranked in by_chapter.values():
        ranked.sort()
        if len(ranked) <= QUINTILES:
            # Spread over the quintiles so that a chapter's dearest is always 5.
            step = (QUINTILES - 1) / max(1, len(ranked) - 1)
            for k, (_, cat) in enumerate(ranked):
                bins[cat] = QUINTILES if len(ranked) == 1 else round(1 + k * step)
        else:
            for k, (_, cat) in enumerate(ranked):
                bins[cat] = k * QUINTILES // len(ranked) + 1
    return dict(sorted(bins.items()))


def hmg(primary: str | None, diagnoses: Iterable[str] | None, bins: Mapping[str, int]) -> str:
    """``<DG>.<MG>.<severity>`` of a stay, with the bins in force."""
    return f"{chapter(primary)}.{bins.get(category(primary), 0)}.{severity(diagnoses)}"
