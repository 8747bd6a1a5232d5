"""A deterministic synthetic province for fundwatch (``fundwatch simulate``).

Guangdong (44) is the home province: its capital Guangzhou and five other cities,
each with an employee (职工) and a resident (城乡居民) pool. Guangxi (45), Hunan (43)
and Jiangxi (36) are neighbours with fewer pools. Hospitals of levels 1/2/3, primary
care, pharmacies and pharmacy chains spanning provinces treat a sampled population;
the stream carries settlements (with reversals, sync lag, hand-keyed errors and
re-sent duplicates) and the pools' contributions, all in the interchange contract's
format (``settlement/v1``, ``contribution/v1``, ``pools/v1``).

The population is a *sample* of a province (about 76,000 insured persons at
``scale=1``): pool balances and contributions are sized to the sampled flow, so
that months-of-payment and deficits mean what they would mean in the real pool.

Injected anomalies (each recorded in ``Simulation.truth``): unfiled cross-region
inpatient runs (the first within the first ten days, for short demos), a
cross-province cost surge at a border hospital with a steady cross-province baseline
(from two thirds into the period; with 42 days or more, after at least five weeks of
baseline), phantom bed stays, overlapping stays, split
admissions, a pharmacy chain with inflated claims across provinces, a siphon shift of
one pool's inpatients to the capital's tertiary hospitals (in the last full calendar
month that follows three full months, if the period has one), a pool driven into
deficit and thin pools, malformed records, exact and conflicting duplicates. With
three weeks or more, varied cases for the deterministic companions (overlapping
stays sharing one night, nested, across provinces; split admissions on the day of
discharge, on the 15th day, coded one digit apart, away from home; a second chain
inflating one province's invoices or billing harvested cards in two provinces) and
their look-alikes (same-day transfers, a reversed overlap, readmissions too late,
for another condition, elsewhere or planned, a one-province chain's jump, a
traveller), see ``_inject_companions``.

Truth entries: ``{"anomaly": rule_id, "subject": {"kind", "id"}, "regions",
"window": {"start", "end"}, "settlement_ids", "note", "expected"?}``; pool findings
carry ``"injected": true|false`` (every month the contract's balances flag is listed,
planted or not), and so do overlapping stays and split admissions the data shows
without being planted (``false``); ``{"anomaly": "lookalike", "rule_id": ...,
"injected": false, ...}`` (same shape) is a case the rule must *not* flag;
``{"anomaly": "malformed", "expected_reason": code, "line": n}`` for bad lines; ``duplicate``/``conflicting_duplicate`` entries give ``line`` and
``original_line``. Lines are numbered from 1, as ``fundwatch validate`` numbers them.

Money flows: contributions are remitted every workday (the resident fiscal subsidy on
Wednesdays; adjustment-fund flows on the 25th), each calendar month adding up to the
pool's budget, so a stream of any length starts and ends without artificial deficits.

Everything is driven by ``random.Random`` instances seeded from ``seed`` (one per
phase, so tuning one phase does not reshuffle the others): no wall clock, no global
random state, so the same arguments give byte-identical output.
"""
from __future__ import annotations

import bisect
import calendar
import functools
import gc
import gzip
import itertools
import math
import operator
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from statistics import NormalDist
from typing import Any

import orjson
import yaml

from rules.alerts import month_window, previous_month

__all__ = ["Simulation", "simulate", "write"]

# --------------------------------------------------------------------------- geography

#: Provinces: name, pooling mode (DESIGN.md), share of fund revenue paid up to the
#: provincial adjustment fund, capital. Guangdong's ratios are the contract's example.
PROVINCES: dict[str, dict[str, Any]] = {
    "44": {"name": "广东省", "mode": "adjustment_fund",
           "adjustment_ratio": {"employee": 0.03, "resident": 0.07}, "capital": "440100"},
    "45": {"name": "广西壮族自治区", "mode": "adjustment_fund",
           "adjustment_ratio": {"employee": 0.03, "resident": 0.08}, "capital": "450100"},
    "43": {"name": "湖南省", "mode": "adjustment_fund",
           "adjustment_ratio": {"employee": 0.04, "resident": 0.08}, "capital": "430100"},
    "36": {"name": "江西省", "mode": "adjustment_fund",
           "adjustment_ratio": {"employee": 0.03, "resident": 0.06}, "capital": "360100"},
}

# region, name, simulated employee / resident insured at scale 1, retiree share of
# employees (Shenzhen is young), institutions (L3, L2, L1 hospitals, clinics, pharmacies)
CITIES: list[tuple[str, str, int, int, float, tuple[int, int, int, int, int]]] = [
    ("440100", "广州市", 9000, 5000, 0.18, (6, 10, 6, 14, 18)),
    ("440300", "深圳市", 10000, 3000, 0.06, (4, 8, 6, 14, 18)),
    ("440600", "佛山市", 5000, 3500, 0.15, (2, 6, 6, 10, 12)),
    ("440900", "茂名市", 2000, 5000, 0.24, (2, 5, 6, 10, 10)),
    ("441500", "汕尾市", 800, 2500, 0.24, (1, 3, 5, 8, 6)),
    ("445200", "揭阳市", 1500, 5000, 0.22, (1, 4, 6, 10, 8)),
    ("450100", "南宁市", 2500, 3000, 0.22, (3, 5, 4, 8, 10)),
    ("450300", "桂林市", 1000, 2500, 0.26, (1, 3, 4, 6, 6)),
    ("430100", "长沙市", 3000, 2500, 0.22, (3, 5, 4, 8, 10)),
    ("431000", "郴州市", 1000, 3000, 0.26, (1, 3, 4, 6, 6)),
    ("360100", "南昌市", 2500, 2500, 0.24, (2, 4, 4, 8, 8)),
]
CITY_NAME = {c[0]: c[1] for c in CITIES}
REGIONS = [c[0] for c in CITIES]

#: Pharmacy chains (branches per region) and one hospital group. PCH002 is the chain
#: whose branches inflate claims (pharmacy_chain_anomaly); PCH001 and PCH003 also
#: span provinces and stay clean, so a rule must tell them apart.
PHARMACY_CHAINS: list[tuple[str, str, dict[str, int]]] = [
    ("PCH001", "康联大药房", {"440100": 3, "440300": 2, "440600": 1, "450100": 2, "430100": 1}),
    ("PCH002", "仁济堂大药房", {"440300": 2, "440900": 2, "450100": 2, "450300": 1,
                                "431000": 1}),
    ("PCH003", "赣康大药房", {"360100": 3, "440600": 1, "440300": 1}),
    ("PCH004", "潮汕百姓大药房", {"445200": 2, "441500": 2}),
]
HOSPITAL_GROUP = ("HG001", "岭南医联体", ["H440100001", "H440600004", "H440900004"])

#: Where people of a province who live away from home go (migrant workers, retirees).
MIGRATION = {
    "45": {"440900": 0.45, "440100": 0.2, "440600": 0.15, "440300": 0.2},
    "43": {"440300": 0.4, "440100": 0.35, "440600": 0.25},
    "36": {"440300": 0.5, "440600": 0.3, "440100": 0.2},
}
HOMETOWNS = ["430100", "431000", "450100", "450300", "360100"]  # GD retirees going home
#: Hospitals designated for cross-province direct settlement in a region get most of
#: that care (weight multiplier in the networked tables): Maoming's flagship serves the
#: Guangxi border area, which gives the cross_province_surge rule a real baseline.
DESIGNATED_CROSS_PROVINCE = {"H440900001": 6.0}
#: Cross-border referrals of inpatients living at home: province -> (hospital, share).
BORDER_REFERRALS = {"45": ("H440900001", 0.08)}
#: Regular cross-province patients of that hospital (跨省直接结算 of outpatient chronic
#: and special diseases, 门诊慢特病): people insured in Guangxi and living there who
#: cross the border on a schedule, for haemodialysis three times a week or for cancer
#: day care (chemotherapy, targeted drugs) once a week. A fixed cohort, whatever the
#: scale: it gives the hospital the steady cross-province volume a designated border
#: hospital has (about 34 settlements and 80,000 yuan a week), so that even a small
#: sample of the province has a baseline the surge rule can judge (its default guards:
#: 10 settlements and 20,000 yuan a week) and that a single costly stay does not
#: double. Diagnosis -> patients.
BORDER_REGULARS = ("H440900001", ("450100", "450300"),
                   {"N18.5": 8, "C34.9": 3, "C16.9": 2, "C18.9": 2, "C22.0": 2, "C50.9": 2})
BORDER_CANCER_COST = 3.0  # cost level of a cancer day-care visit (drugs) over a plain one
#: The injected cross-province surge: the weekly cross-province cost after the onset is
#: at least ``SURGE_RATIO`` times the baseline's, and at least ``SURGE_MIN_EXCESS`` fen
#: (120,000 yuan) above it, well clear of the baseline's own week-to-week spread (a few
#: costly stays more or less) at any scale from 0.1.
SURGE_RATIO = 2.2
SURGE_MIN_EXCESS = 12_000_000
#: The injected siphon shift (虹吸效应): in the last full calendar month that follows three
#: full months, this pool sends more of its inpatients to the capital's tertiary
#: hospitals: at least ``SIPHON_MIN_PP`` percentage points over its usual share, and a
#: two-proportion z of at least ``SIPHON_MIN_Z``. Each of the four months holds at least
#: ``SIPHON_MIN_STAYS`` of the pool's stays (topped up with ordinary stays in a small
#: sample), comfortably above the rule's default guard of 20.
#: The injected management overspend (管理风险): this pool's stays at its own city's
#: hospitals cost ``OVERSPEND_FACTOR`` times what the same case mix costs elsewhere,
#: in every month (lax claim review, not sicker patients).
OVERSPEND_POOL = ("440300", "employee")
OVERSPEND_FACTOR = 1.6
SIPHON_POOL = ("440900", "resident")
SIPHON_MIN_PP = 25
SIPHON_MIN_Z = 4.0
SIPHON_MIN_STAYS = 30

# --------------------------------------------------------------------------- medicine

_AGE_PROFILES = {  # relative weight by age band 0-5, 6-17, 18-44, 45-59, 60-74, 75+
    "all": (1, 1, 1, 1, 1, 1), "child": (3, 2, 0.2, 0.1, 0.1, 0.1),
    "child_all": (2.5, 1.5, 1, 0.8, 0.8, 0.8), "infant": (5, 0.05, 0, 0, 0, 0),
    "child_elder": (2.5, 0.7, 0.3, 0.6, 1.5, 2.5), "young": (0.3, 1.2, 1.2, 0.7, 0.5, 0.4),
    "adult": (0.05, 0.3, 1, 1, 0.7, 0.5), "adult_old": (0, 0.1, 0.6, 1, 1.2, 1.1),
    "midold": (0, 0.02, 0.3, 1, 1.4, 1.3), "elder": (0, 0, 0.1, 0.6, 1.5, 2),
    "old": (0, 0, 0.1, 0.7, 1.5, 1.5), "birth": (0, 0, 1, 0.03, 0, 0),
}


@dataclass(frozen=True)
class Dx:
    """One ICD-10 diagnosis with its visit mix and cost level (yuan at a level-2 hospital)."""

    code: str
    op_w: float  # relative frequency in outpatient visits
    ip_w: float  # ... in inpatient stays
    em_w: float  # ... in emergency visits
    ph_w: float  # ... at pharmacies
    op_cost: float
    ip_cost: float
    los: float  # mean length of stay, days
    ages: str
    sex: str | None  # "F"/"M" only that sex; "f"/"m" biased; None either
    surgical: bool


_D = Dx
DIAGNOSES: list[Dx] = [
    _D("J06.9", 30, 0, 6, 8, 120, 0, 0, "child_all", None, False),
    _D("J02.9", 10, 0, 2, 3, 110, 0, 0, "all", None, False),
    _D("J03.9", 6, 0.5, 2, 1, 140, 3500, 4, "child", None, False),
    _D("J20.9", 10, 1, 2, 3, 160, 4500, 6, "all", None, False),
    _D("J18.9", 5, 10, 5, 0, 260, 7000, 8, "child_elder", None, False),
    _D("J21.9", 2, 3, 2, 0, 220, 5000, 6, "infant", None, False),
    _D("J44.1", 4, 6, 3, 2, 300, 11000, 10, "elder", "m", False),
    _D("J45.9", 4, 1.5, 2, 3, 200, 6000, 6, "all", None, False),
    _D("J32.9", 3, 0.8, 0, 1, 180, 9000, 5, "adult", None, True),
    _D("I10", 25, 1.5, 1, 20, 180, 6000, 7, "elder", None, False),
    _D("I20.0", 2, 4, 2, 0, 350, 16000, 7, "elder", "m", False),
    _D("I21.9", 0.5, 2.5, 2, 0, 500, 45000, 10, "elder", "m", True),
    _D("I25.1", 6, 2.5, 0.5, 6, 300, 14000, 8, "elder", None, False),
    _D("I48.9", 2, 1.5, 1, 2, 300, 13000, 7, "elder", None, False),
    _D("I50.9", 2, 3.5, 1.5, 1, 350, 13000, 10, "old", None, False),
    _D("I63.9", 2, 7, 2.5, 1, 350, 18000, 12, "elder", "m", False),
    _D("I61.9", 0, 1.2, 1, 0, 0, 42000, 18, "elder", "m", False),
    _D("G45.9", 1, 1, 1, 0, 300, 8000, 6, "elder", None, False),
    _D("E11.9", 18, 3, 0.5, 16, 220, 8000, 9, "midold", None, False),
    _D("E78.5", 8, 0, 0, 10, 160, 0, 0, "midold", None, False),
    _D("E03.9", 2, 0, 0, 2, 150, 0, 0, "adult", "f", False),
    _D("K29.7", 12, 1, 1.5, 5, 200, 5000, 5, "adult", None, False),
    _D("K21.9", 4, 0, 0, 3, 180, 0, 0, "adult", None, False),
    _D("K35.8", 0.3, 2.5, 1.5, 0, 300, 12000, 5, "young", None, True),
    _D("K80.2", 1, 2.5, 0.5, 0, 250, 20000, 6, "adult_old", "f", True),
    _D("K40.9", 1, 1.5, 0, 0, 200, 10000, 4, "adult_old", "M", True),
    _D("K52.9", 5, 0.5, 3, 1, 150, 4000, 4, "all", None, False),
    _D("A09", 4, 1, 3, 0, 150, 4000, 4, "child_all", None, False),
    _D("K92.2", 0.3, 1, 1, 0, 300, 15000, 7, "elder", "m", False),
    _D("K74.6", 1, 1, 0.3, 1, 400, 20000, 12, "midold", "m", False),
    _D("K56.7", 0.2, 0.8, 1, 0, 300, 16000, 8, "elder", None, True),
    _D("C34.9", 1.5, 3, 0.3, 1, 1500, 42000, 14, "old", "m", False),
    _D("C16.9", 0.8, 1.5, 0, 0.5, 1500, 50000, 15, "old", "m", True),
    _D("C18.9", 0.8, 1.5, 0, 0.5, 1500, 45000, 14, "old", None, True),
    _D("C22.0", 0.8, 1.5, 0.2, 0.5, 1600, 48000, 13, "midold", "m", False),
    _D("C50.9", 1, 1.5, 0, 1, 1400, 35000, 10, "adult_old", "F", True),
    _D("C61", 0.5, 0.7, 0, 0.5, 1200, 30000, 10, "elder", "M", True),
    _D("C53.9", 0.4, 0.6, 0, 0, 1300, 35000, 12, "adult_old", "F", True),
    _D("D25.9", 1, 1.2, 0, 0, 250, 15000, 6, "adult", "F", True),
    _D("O80", 1.5, 3, 0, 0, 200, 5000, 3, "birth", "F", False),
    _D("O82", 0, 2, 0, 0, 0, 9000, 5, "birth", "F", True),
    _D("S72.0", 0.3, 1.5, 1, 0, 400, 45000, 14, "old", "f", True),
    _D("S82.2", 0.5, 1, 1, 0, 350, 25000, 10, "adult", "m", True),
    _D("S52.5", 1, 1, 2, 0, 300, 12000, 6, "all", None, True),
    _D("S06.0", 1, 1, 3, 0, 350, 7000, 5, "all", "m", False),
    _D("T14.0", 4, 0, 5, 1, 120, 0, 0, "all", None, False),
    _D("N18.5", 4, 1.5, 0.5, 0, 500, 20000, 10, "midold", None, False),
    _D("N39.0", 4, 0.6, 1, 1, 160, 5000, 5, "adult_old", "f", False),
    _D("N20.0", 2, 1.2, 2, 0, 300, 15000, 5, "adult", "m", True),
    _D("N40", 2, 0.8, 0, 2, 220, 12000, 7, "elder", "M", True),
    _D("M54.5", 10, 0.8, 0.5, 4, 180, 7000, 9, "adult_old", None, False),
    _D("M17.9", 5, 1, 0, 3, 200, 30000, 10, "elder", "f", True),
    _D("M81.9", 2, 0, 0, 3, 200, 0, 0, "elder", "f", False),
    _D("M51.2", 2, 1, 0, 1, 250, 15000, 9, "adult", None, False),
    _D("G43.9", 2, 0, 1, 1, 180, 0, 0, "adult", "f", False),
    _D("G20", 1, 0.3, 0, 2, 300, 12000, 10, "elder", None, False),
    _D("F32.9", 2, 0.3, 0, 2, 250, 12000, 20, "adult", "f", False),
    _D("F20.9", 1, 0.6, 0, 2, 300, 15000, 35, "adult", None, False),
    _D("H25.9", 2, 1.5, 0, 0, 200, 7000, 2, "elder", None, True),
    _D("H10.9", 3, 0, 0.5, 2, 100, 0, 0, "all", None, False),
    _D("H66.9", 3, 0.2, 1, 1, 130, 4000, 4, "child", None, False),
    _D("A15.0", 0.5, 0.6, 0, 1, 300, 15000, 14, "adult_old", "m", False),
    _D("B18.1", 3, 0.3, 0, 5, 400, 10000, 10, "adult", "m", False),
    _D("B01.9", 1, 0.1, 0.3, 0, 120, 3000, 4, "child", None, False),
    _D("L20.9", 3, 0, 0, 3, 150, 0, 0, "child_all", None, False),
    _D("L03.9", 1.5, 0.4, 0.5, 1, 160, 5000, 6, "adult", None, False),
    _D("R50.9", 5, 0, 4, 0, 150, 0, 0, "child", None, False),
    _D("R10.4", 3, 0, 4, 0, 200, 0, 0, "adult", None, False),
    _D("R51", 2, 0, 2, 1, 150, 0, 0, "adult", None, False),
    _D("P59.9", 0.3, 0.6, 0, 0, 150, 5000, 5, "infant", None, False),
    _D("D64.9", 1, 0.3, 0, 1, 180, 6000, 6, "all", "f", False),
    _D("T78.4", 1, 0, 2, 1, 150, 0, 0, "all", None, False),
    _D("Z00.0", 4, 0, 0, 0, 250, 0, 0, "adult_old", None, False),
]
DX_BY_CODE = {d.code: d for d in DIAGNOSES}
# Secondary diagnoses are the chronic conditions that travel with a patient.
SECONDARY = [("I10", 5), ("E11.9", 4), ("E78.5", 3), ("I25.1", 2), ("J44.1", 1),
             ("N18.5", 0.5), ("I48.9", 1), ("M81.9", 1), ("D64.9", 1), ("B18.1", 0.7)]
MAJOR_COST = 20000  # inpatient mean cost (yuan) from which a case goes to big hospitals

VISIT_TYPES = ("outpatient", "pharmacy", "emergency", "inpatient")
AGE_BANDS = [0] * 6 + [1] * 12 + [2] * 27 + [3] * 15 + [4] * 15 + [5] * 56  # index: age
# Utilisation by age band and visit type (children and the elderly use more care).
AGE_USE = {
    "outpatient": (1.6, 0.8, 0.6, 1.0, 1.7, 2.2),
    "pharmacy": (0.5, 0.4, 0.8, 1.2, 1.5, 1.5),
    "emergency": (2.0, 1.0, 1.0, 0.9, 1.2, 1.8),
    "inpatient": (1.0, 0.3, 0.6, 0.9, 2.0, 3.2),
}
# Daily volumes at scale 1 (the sample's settlement systems), before weekday rhythm.
BASE_DAILY = {"outpatient": 1250, "pharmacy": 700, "emergency": 130, "inpatient": 95}
# Weekday rhythm by day kind: first workday after a rest day, other workday, rest day.
RHYTHM = {
    "outpatient": (1.15, 1.0, 0.6), "pharmacy": (1.0, 1.0, 1.08),
    "emergency": (1.0, 1.0, 1.12), "inpatient": (1.4, 1.05, 0.55),
}
# Hour-of-day weights (0..23) per visit type; "discharge" for inpatient settlement.
_HOURS = {
    "outpatient": (0, 0, 0, 0, 0, 0, 0, 0.5, 6, 10, 10, 8, 3, 2, 6, 7, 6, 3, 1.5, 1, .6, .4, .2, 0),
    "pharmacy": (0, 0, 0, 0, 0, 0, 0, 0.3, 2, 4, 5, 5, 4, 3, 3, 4, 4, 4, 5, 5, 4, 3, 1, 0.2),
    "emergency": (2, 1.5, 1.2, 1, 1, 1, 1.3, 2, 3, 3.5, 3.5, 3, 3, 3, 3, 3, 3, 3.5, 4, 4.5, 4.5, 4,
                  3.5, 2.5),
    "inpatient": (0, 0, 0, 0, 0, 0, 0, 0, 2, 6, 8, 8, 4, 2, 5, 6, 5, 3, 1, 0, 0, 0, 0, 0),
    "contribution": (0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5, 2, 1, 5, 5, 5, 2, 0, 0, 0, 0, 0, 0),
}
_HOUR_CUM = {k: list(itertools.accumulate(v)) for k, v in _HOURS.items()}
_TOD8 = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+08:00" for s in range(86400)]

# Official public holidays and make-up workdays (调休); other years: plain weekdays.
_HOLIDAYS = {
    2024: (("01-01 02-10 02-11 02-12 02-13 02-14 02-15 02-16 02-17 04-04 04-05 04-06 05-01 "
            "05-02 05-03 05-04 05-05 06-10 09-15 09-16 09-17 10-01 10-02 10-03 10-04 10-05 "
            "10-06 10-07"), "02-04 02-18 04-07 04-28 05-11 09-14 09-29 10-12"),
    2025: (("01-01 01-28 01-29 01-30 01-31 02-01 02-02 02-03 02-04 04-04 04-05 04-06 05-01 "
            "05-02 05-03 05-04 05-05 05-31 06-01 06-02 10-01 10-02 10-03 10-04 10-05 10-06 "
            "10-07 10-08"), "01-26 02-08 04-27 09-28 10-11"),
}

# Reimbursement: (insurance type, visit, level key) -> (rate in per mille, deductible fen).
# Level key: "C" primary care, "P" pharmacy, 1/2/3 hospital levels.
RATES: dict[tuple[str, str, Any], tuple[int, int]] = {}
for _ins, _ip, _op, _ded in (
    ("employee", {1: 920, 2: 880, 3: 850, "C": 920}, {"C": 700, 1: 700, 2: 600, 3: 500, "P": 500},
     {1: 30000, 2: 60000, 3: 100000, "C": 20000}),
    ("resident", {1: 850, 2: 750, 3: 600, "C": 880}, {"C": 550, 1: 500, 2: 450, 3: 400, "P": 350},
     {1: 20000, 2: 50000, 3: 90000, "C": 10000}),
):
    for _lvl, _r in _ip.items():
        RATES[(_ins, "inpatient", _lvl)] = (_r, _ded[_lvl])
    for _lvl, _r in _op.items():
        RATES[(_ins, "outpatient", _lvl)] = (_r, 0)
        RATES[(_ins, "pharmacy", _lvl)] = (_r, 0)
        RATES[(_ins, "emergency", _lvl)] = (min(_r + 50, 900), 0)
LEVEL_OP_COST = {"C": 0.55, 1: 0.7, 2: 1.0, 3: 1.45, "P": 0.6}
LEVEL_IP_COST = {"C": 0.35, 1: 0.42, 2: 0.7, 3: 1.05}  # national mean stay ~10-15k yuan
BED_RATE_FEN = {"C": 2500, 1: 3500, 2: 5500, 3: 8000}  # per day
ITEM_SHARES = {  # (drug, exam, treatment, material, other) after bed and nursing
    "medical": (0.42, 0.22, 0.14, 0.07, 0.09),
    "surgical": (0.27, 0.15, 0.17, 0.32, 0.07),
}
INVALID_REGIONS = ("990100", "810000", "710000", "300100")  # 81/71: HK, Taiwan: not mainland

MALFORMED_KINDS = [  # (expected reason code, weight, needs an inpatient record)
    ("not_json", 15, False), ("amounts_do_not_add_up", 20, False),
    ("discharge_before_admission", 8, True), ("inpatient_without_dates", 7, True),
    ("invalid_region", 10, False), ("datetime_without_offset", 12, False),
    ("negative_amount", 8, False), ("invalid_diagnosis", 12, False),
]


# --------------------------------------------------------------------------- API

@dataclass
class Simulation:
    """A generated stream and what is known about it.

    ``events``: JSON lines without trailing newline, in roughly the order a
    settlement system emits them (malformed lines and duplicates interleaved).
    ``registry``: the pool registry (``pools/v1``). ``truth``: one dict per injected
    anomaly. ``meta``: the arguments and a few counts, for logs and reports.
    """

    events: list[bytes]
    registry: dict
    truth: list[dict]
    meta: dict = field(default_factory=dict)


def simulate(days: int = 30, seed: int = 7, start: date = date(2025, 3, 1),
             scale: float = 1.0) -> Simulation:
    """Generate ``days`` days of a synthetic province from ``start``, deterministically.

    ``scale`` multiplies the insured population and so the volume (about 1,500–3,000
    settlements a day at 1.0). Same arguments, same bytes.

    >>> sim = simulate(days=3, seed=1, scale=0.05)
    >>> import orjson
    >>> orjson.loads(sim.events[0])["schema"] in ("settlement/v1", "contribution/v1")
    True
    >>> sorted({t["anomaly"] for t in sim.truth} & {"unfiled_cross_region", "malformed"})
    ['malformed', 'unfiled_cross_region']
    >>> sim.events == simulate(days=3, seed=1, scale=0.05).events
    True
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    if not scale > 0:
        raise ValueError("scale must be > 0")
    # The generator builds ~10^5 acyclic objects that all stay alive: the cyclic
    # collector would only rescan them again and again (a quarter of the run time).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Builder(int(days), int(seed), start, float(scale)).run()
    finally:
        if enabled:
            gc.enable()


def write(sim: Simulation, out: Path) -> dict[str, Path]:
    """Write the stream to ``out`` and its registry and truth beside it.

    ``out = x/sim.jsonl`` gives ``x/sim.pools.yaml`` and ``x/sim.truth.jsonl``; a
    ``.gz`` suffix gzips the stream (deterministically: no timestamp in the header).
    Returns ``{"events": ..., "pools": ..., "truth": ...}``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson"):
        stem = stem.removesuffix(suffix)
    pools = out.with_name(f"{stem}.pools.yaml")
    truth = out.with_name(f"{stem}.truth.jsonl")
    body = b"\n".join(sim.events) + b"\n" if sim.events else b""
    if out.name.endswith(".gz"):
        with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0,
                                                  filename="") as gz:
            gz.write(body)
    else:
        out.write_bytes(body)
    pools.write_text(yaml.safe_dump(sim.registry, allow_unicode=True, sort_keys=False,
                                    width=120), encoding="utf-8")
    truth.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in sim.truth))
    return {"events": out, "pools": pools, "truth": truth}


# --------------------------------------------------------------------------- internals

_NQ = 8192  # quantile tables: a draw is one getrandbits(13), cheaper than random.gauss
_NORM = [NormalDist().inv_cdf((k + 0.5) / _NQ) for k in range(_NQ)]
_LN = {s: [math.exp(s * z - 0.5 * s * s) for z in _NORM]  # mean-one lognormal factors
       for s in (0.3, 0.35, 0.45, 0.55, 0.7)}
_FRAIL = [math.exp(0.8 * NormalDist().inv_cdf((k + 0.5) / 1024) - 0.32) for k in range(1024)]
_CENTS = [f"{i:02d}" for i in range(100)]  # a table beats the :02d format spec
_SEQ = [f"{i:04d}" for i in range(10000)]
_AGE60_DAYS = 21915  # days lived from which (days * 10000 // 3652425) >= 60


def _money(fen: int, as_str: bool) -> str | float:
    """Fen as a decimal string ("-12.30") or as the nearest double (orjson prints
    it with at most two decimals)."""
    if not as_str:
        return fen / 100
    if fen < 0:
        return f"-{-fen // 100}.{_CENTS[-fen % 100]}"
    return f"{fen // 100}.{_CENTS[fen % 100]}"


def _yuan(fen: int) -> str:
    return _money(fen, True)  # type: ignore[return-value]


def _cum(weights: Any) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rnd, cum: list[float]) -> int:
    return bisect.bisect_right(cum, rnd() * cum[-1])


def _quantile_lut(weights: list[float], size: int) -> list[int]:
    """Index table: entry k is the category at quantile (k + .5)/size."""
    cum = _cum(weights)
    return [bisect.bisect_right(cum, (k + 0.5) / size * cum[-1]) for k in range(size)]


class _Ev:
    """A settlement in the making, kept compact; its JSON is built only when written.

    Amounts are integer fen. ``items`` holds inpatient cost lines; pharmacy lines come
    from ``qty`` and outpatient lines from ``opi`` (0 none, 1 split, 2 drugs only), so
    the bulk of events allocate nothing but this object. ``k`` is the sequence number
    in the settlement id, given once all events exist; ``link`` is the original of a
    reversal or a re-sent duplicate.
    """

    __slots__ = ("adm", "day", "dis", "dxs", "emit", "filing", "fund", "inst", "items", "k",
                 "line", "link", "opi", "p", "pool", "qty", "sec", "seq", "tag", "total",
                 "variant", "vt")

    def __init__(self, p: int, inst: int, day: int, sec: int, vt: str, dxs: tuple,
                 total: int, fund: int, items: list | None, qty: int, opi: int, filing: str,
                 adm: int | None, dis: int | None, tag: str, pool: int) -> None:
        self.p, self.inst, self.day, self.sec, self.vt, self.dxs = p, inst, day, sec, vt, dxs
        self.total, self.fund, self.items, self.qty, self.opi = total, fund, items, qty, opi
        self.filing, self.adm, self.dis, self.tag, self.pool = filing, adm, dis, tag, pool
        self.emit = day * 86400 + sec  # when the system sends it (lag added later)
        self.link: _Ev | None = None
        self.variant = ""
        self.k = self.line = self.seq = 0

    def clone(self, **changes: Any) -> _Ev:
        ev = _Ev.__new__(_Ev)
        for name in _Ev.__slots__:
            setattr(ev, name, getattr(self, name))
        for name, value in changes.items():
            setattr(ev, name, value)
        ev.emit = ev.day * 86400 + ev.sec
        return ev


class _Contrib:
    """A contribution/v1 record in the making."""

    __slots__ = ("amount", "day", "emit", "line", "pool", "sec", "seq", "source", "tag")

    def __init__(self, pool: int, day: int, sec: int, source: str, amount: int) -> None:
        self.pool, self.day, self.sec, self.source, self.amount = pool, day, sec, source, amount
        self.emit = day * 86400 + sec
        self.seq = self.line = 0
        self.tag = "contribution"


class _Builder:
    def __init__(self, days: int, seed: int, start: date, scale: float) -> None:
        self.days, self.seed, self.start, self.scale = days, seed, start, scale
        self.ord0 = start.toordinal()
        self.lo = -75  # earliest admission day (stays already running at the start)
        span = range(self.lo - 1, days + 40)
        self.dates = {d: date.fromordinal(self.ord0 + d) for d in span}
        self.dstr = {d: v.isoformat() for d, v in self.dates.items()}
        self.ymd = {d: v.strftime("%Y%m%d") for d, v in self.dates.items()}
        self.month = {d: s[:7] for d, s in self.dstr.items()}
        self.dayT = {d: f"{s}T" for d, s in self.dstr.items()}
        rest = {d: self._is_rest(d) for d in span}
        # 0: first workday after rest (Monday-like), 1: workday, 2: rest day
        self.kind = {d: 2 if rest[d] else (0 if rest.get(d - 1, False) else 1) for d in span}
        self.events: list[_Ev] = []
        self.contribs: list[_Contrib] = []
        self.truth: list[dict] = []
        self.stays: dict[int, list[tuple[int, int]]] = {}
        self.dx1 = {dx.code: (dx.code,) for dx in DIAGNOSES}  # shared one-code tuples
        self._recorder: Any = None

    def rng(self, phase: str) -> random.Random:
        # A str seed is hashed with SHA-512 by CPython: stable across processes and
        # independent of PYTHONHASHSEED. One stream per phase keeps phases independent.
        return random.Random(f"fundwatch-sim/{self.seed}/{phase}")

    def _is_rest(self, d: int) -> bool:
        dt = self.dates[d]
        hol = _HOLIDAYS.get(dt.year)
        if hol:
            md = dt.strftime("%m-%d")
            if md in hol[0].split():
                return True
            if md in hol[1].split():
                return False  # make-up workday (调休)
        return dt.weekday() >= 5

    def age(self, p: int, d: int) -> int:
        return (self.ord0 + d - self.p_birth[p]) * 10000 // 3652425

    def in_stay(self, p: int, d: int) -> bool:
        s = self.stays.get(p)
        return s is not None and any(a <= d <= b for a, b in s)

    def settled_at(self, ev: _Ev) -> str:
        return self.dayT[ev.day] + _TOD8[ev.sec]

    def sid(self, ev: _Ev) -> str:
        """结算流水号: institution id + date + sequence of the day."""
        k = ev.k  # a re-sent duplicate carries its original's number
        return f"{self.inst_id[ev.inst]}{self.ymd[ev.day]}{_SEQ[k] if k < 10000 else k}"

    # ------------------------------------------------------------------ run
    def run(self) -> Simulation:
        self._geography()
        self._build_dx_tables()
        self._persons()
        self._plan_anomalies()
        self._background_inpatient()
        self._background_visits()
        self._border_regulars()
        self._inject_surge()
        self._inject_chain()
        self._reversals()
        self._malformed()
        self._duplicates()
        # After the stream noise, which it leaves as it was: no moved stay is reversed
        # or corrupted, and the noise phases draw what they drew without it.
        self._inject_siphon()
        self._inject_companions()
        self._inject_phantoms()
        self._incidental_truth()
        self._coding_against_the_knowledge_table()
        registry = self._money_flows()
        self._assign_ids()
        lines = self._serialise()
        self._pool_truth()
        self._overspend_truth()
        for t in self.truth:  # events -> the ids they were given
            if "settlement_ids" in t:
                t["settlement_ids"] = [self.sid(e) if isinstance(e, _Ev) else e
                                       for e in t["settlement_ids"]]
            if "subject" in t and isinstance(t["subject"]["id"], _Ev):
                t["subject"]["id"] = self.sid(t["subject"]["id"])
        order = {"malformed": 2, "duplicate": 1, "conflicting_duplicate": 1}
        self.truth.sort(key=lambda t: (order.get(t["anomaly"], 0), t.get("line", 0),
                                       t["anomaly"], t["subject"]["id"] if "subject" in t
                                       else ""))
        tags: dict[str, int] = defaultdict(int)
        for ev in self.events:
            tags[ev.tag] += 1
        tags["contribution"] = len(self.contribs)
        meta = {"days": self.days, "seed": self.seed, "start": self.start.isoformat(),
                "scale": self.scale, "lines": len(lines), "persons": len(self.p_id),
                "institutions": len(self.inst_id), "by_tag": dict(sorted(tags.items()))}
        return Simulation(events=lines, registry=registry, truth=self.truth, meta=meta)

    # ------------------------------------------------------------------ geography
    def _geography(self) -> None:
        rng = self.rng("geography")
        self.pools: list[tuple[str, str]] = []
        self.pool_index: dict[tuple[str, str], int] = {}
        for region, *_ in CITIES:
            for ins in ("employee", "resident"):
                self.pool_index[(region, ins)] = len(self.pools)
                self.pools.append((region, ins))
        # Institutions as parallel lists indexed by an int: the hot loops stay cheap.
        self.inst_id: list[str] = []
        self.inst_rows: list[dict] = []
        self.inst_region: list[str] = []
        self.inst_type: list[str] = []
        self.inst_level: list[Any] = []  # 1/2/3, "C" primary care, "P" pharmacy
        self.inst_chain: list[str | None] = []
        self.inst_style: list[bool] = []  # its system writes amounts as strings
        self.inst_items: list[bool] = []  # its system sends outpatient cost lines
        self.inst_manual: list[bool] = []  # keyed in by hand (county institutions)
        self.inst_net: list[bool] = []  # cross-province direct settlement (跨省联网定点)
        self.inst_capital_l3: list[bool] = []
        by_id: dict[str, int] = {}
        chain_slots = {(r, cid): n for cid, _, br in PHARMACY_CHAINS for r, n in br.items()}
        chain_name = {cid: name for cid, name, _ in PHARMACY_CHAINS}
        l3_names = ["第一人民医院", "中医院", "第二人民医院", "中心医院", "第三人民医院",
                    "妇幼保健院"]
        for region, cname, _e, _r, _ret, (n3, n2, n1, nc, npx) in CITIES:
            capital = PROVINCES[region[:2]]["capital"] == region
            short = cname[:-1]
            rows: list[tuple] = []  # (kind, letter, number, level, beds, name, chain, net)
            num = 0
            for k in range(n3):
                num += 1
                beds = rng.randrange(1500, 3300, 50) if capital else rng.randrange(800, 1700, 50)
                if k == 0:  # the flagship hospital is the biggest (Guangzhou's above all)
                    beds += 1200 if region == "440100" else 600 if capital else 200
                rows.append(("hospital", "H", num, 3, beds, f"{short}{l3_names[k % 6]}", None,
                             True))
            for k in range(n2):
                num += 1
                rows.append(("hospital", "H", num, 2, rng.randrange(250, 720, 10),
                             f"{short}第{k + 4}人民医院", None, k % 2 == 0))
            for k in range(n1):
                num += 1
                rows.append(("hospital", "H", num, 1, rng.randrange(40, 160, 5),
                             f"{short}{'东南西北中'[k % 5]}区{k // 5 + 1}号医院", None, False))
            for k in range(nc):
                rows.append(("primary_care", "C", k + 1, "C", rng.choice((0, 0, 10, 20, 30, 40)),
                             f"{short}第{k + 1}社区卫生服务中心", None, False))
            chains_here = [cid for (r, cid), n in chain_slots.items() if r == region
                           for _ in range(n)]
            for k in range(npx):
                chain = chains_here[k] if k < len(chains_here) else None
                name = (f"{chain_name[chain]}{short}{k + 1}号店" if chain
                        else f"{short}{k + 1}号大药房")
                rows.append(("pharmacy", "P", k + 1, "P", 0, name, chain,
                             chain is not None or k % 4 == 0))
            for kind, letter, n, level, beds, name, chain, net in rows:
                iid = f"{letter}{region}{n:03d}"
                by_id[iid] = len(self.inst_id)
                self.inst_id.append(iid)
                self.inst_region.append(region)
                self.inst_type.append(kind)
                self.inst_level.append(level)
                self.inst_chain.append(chain)
                self.inst_style.append(rng.random() < 0.5)
                self.inst_items.append(rng.random() < 0.5)
                # County-level institutions key bills in by hand (DESIGN.md: 28%).
                self.inst_manual.append(not capital and region != "440300"
                                        and level in (1, 2, "C"))
                self.inst_net.append(net)
                self.inst_capital_l3.append(capital and level == 3)
                self.inst_rows.append({
                    "id": iid, "name": name, "region": region, "type": kind,
                    "level": level if isinstance(level, int) else (1 if level == "C" else None),
                    "beds": beds, "chain_id": chain, "cross_province": net})
        gid, gname, members = HOSPITAL_GROUP
        for iid in members:
            self.inst_chain[by_id[iid]] = gid
            self.inst_rows[by_id[iid]]["chain_id"] = gid
        self.inst_by_id = by_id
        self.chain_name = dict(chain_name, **{gid: gname})
        self.i_tup = [(self.inst_id[i], self.inst_type[i], self.inst_rows[i]["level"],
                       self.inst_chain[i], self.inst_region[i], self.inst_style[i])
                      for i in range(len(self.inst_id))]
        # Selection tables per (region, purpose, networked only); a missing networked
        # table falls back to all institutions of the purpose.
        self.tables: dict[tuple[str, str, bool], tuple[list[int], list[float]]] = {}
        for region in REGIONS:
            cap = PROVINCES[region[:2]]["capital"] == region
            idx = [i for i in range(len(self.inst_id)) if self.inst_region[i] == region]
            for purpose in ("outpatient", "emergency", "pharmacy", "ip_minor", "ip_major",
                            "ip_l3"):
                for net in (False, True):
                    rows_, ws = [], []
                    for i in idx:
                        w = self._weight(i, purpose, cap)
                        if net:
                            w *= DESIGNATED_CROSS_PROVINCE.get(self.inst_id[i], 1.0)
                        if w > 0 and (self.inst_net[i] or not net):
                            rows_.append(i)
                            ws.append(w)
                    if rows_:
                        self.tables[(region, purpose, net)] = (rows_, _cum(ws))
                    else:
                        self.tables[(region, purpose, net)] = self.tables[(region, purpose,
                                                                           False)]

    def _weight(self, i: int, purpose: str, capital: bool) -> float:
        lvl, beds, kind = self.inst_level[i], self.inst_rows[i]["beds"], self.inst_type[i]
        if purpose == "pharmacy":
            return (1.6 if self.inst_chain[i] else 1.0) if kind == "pharmacy" else 0
        if kind == "pharmacy":
            return 0
        if purpose == "outpatient":
            return {"C": 45.0, 1: beds * 0.5, 2: beds * 0.35,
                    3: beds * (0.55 if capital else 0.45)}[lvl]
        if purpose == "emergency":
            return {"C": 0, 1: beds * 0.1, 2: beds * 0.8, 3: beds * 1.0}[lvl]
        if purpose == "ip_minor":
            return {"C": beds * 0.4, 1: beds * 0.8, 2: beds * 1.0, 3: beds * 0.6}[lvl]
        if purpose == "ip_major":
            return {"C": 0, 1: beds * 0.05, 2: beds * 0.5, 3: beds * 1.5}[lvl]
        return beds if lvl == 3 else 0  # ip_l3: referrals to the capital's tertiary care

    def _inst(self, rnd, region: str, purpose: str, net: bool) -> int:
        rows, cum = self.tables[(region, purpose, net)]
        return rows[bisect.bisect_right(cum, rnd() * cum[-1])]

    def _build_dx_tables(self) -> None:
        """Per visit type, per (age band, sex): diagnoses and cumulative weights."""
        self.dx_tab: dict[str, list[tuple[list[str], list[float], list[float]]]] = {}
        for vt in VISIT_TYPES:
            per = []
            for band in range(6):
                for sex in ("M", "F"):  # index band * 2 + (1 if female)
                    infos, ws = [], []
                    for dx in DIAGNOSES:
                        w = {"outpatient": dx.op_w, "inpatient": dx.ip_w,
                             "emergency": dx.em_w, "pharmacy": dx.ph_w}[vt]
                        w *= _AGE_PROFILES[dx.ages][band]
                        if dx.sex in ("F", "M") and dx.sex != sex:
                            w = 0
                        elif dx.sex and dx.sex.upper() != sex:
                            w *= 0.4
                        elif dx.sex:
                            w *= 1.6
                        if w > 0:
                            infos.append(dx)
                            ws.append(w)
                    assert infos, (vt, band, sex)
                    per.append(([d.code for d in infos], _cum(ws), [d.op_cost for d in infos]))
            self.dx_tab[vt] = per
        self.sec_codes = [c for c, _ in SECONDARY]
        self.sec_cum = _cum([w for _, w in SECONDARY])

    def _dx(self, rnd, p: int, d: int, vt: str) -> str:
        codes, cum, _ = self.dx_tab[vt][AGE_BANDS[min(self.age(p, d), 130)] * 2 + self.p_sx[p]]
        return codes[bisect.bisect_right(cum, rnd() * cum[-1])]

    def _secondaries(self, rnd, primary: str, age: int, chance: float) -> tuple:
        out = [primary]
        if age < 30:
            chance *= 0.3
        while len(out) < 3 and rnd() < chance:
            c = self.sec_codes[_pick(rnd, self.sec_cum)]
            if c not in out:
                out.append(c)
            chance *= 0.4
        return self.dx1[primary] if len(out) == 1 else tuple(out)

    # ------------------------------------------------------------------ persons
    def _persons(self) -> None:
        """The insured: one 64-bit draw per person gives age, sex, birthday, frailty, home."""
        rng = self.rng("persons")
        bits = rng.getrandbits
        p_id: list[str] = []
        p_sx: list[int] = []
        p_birth: list[int] = []
        p_pool: list[int] = []
        p_res: list[str] = []
        p_filing: list[str] = []
        frail: list[float] = []
        band0: list[int] = []
        emp_bands = ((18, 24, 0.1), (25, 34, 0.32), (35, 44, 0.3), (45, 54, 0.22),
                     (55, 59, 0.06))
        ret_bands = ((60, 69, 0.62), (70, 79, 0.29), (80, 95, 0.09))
        res_bands = ((0, 5, 0.1), (6, 17, 0.17), (18, 44, 0.26), (45, 59, 0.2),
                     (60, 74, 0.18), (75, 96, 0.09))
        migrate = {prov: [list(dest)[i] for i in _quantile_lut(list(dest.values()), 128)]
                   for prov, dest in MIGRATION.items()}
        for region, _name, n_emp, n_res, retire, _inst in CITIES:
            prov = region[:2]
            capital = PROVINCES[prov]["capital"]
            big = region in ("440100", "440300")
            for ins, size in (("employee", n_emp), ("resident", n_res)):
                emp = ins == "employee"
                pool = self.pool_index[(region, ins)]
                if emp:
                    bands = [(a, b, w * (1 - retire)) for a, b, w in emp_bands] + \
                            [(a, b, w * retire) for a, b, w in ret_bands]
                else:
                    bands = list(res_bands)
                ages = self._age_table(tuple(bands))
                male = int((0.54 if emp else 0.5) * 1024)
                mult = 1.15 if emp else 1.0  # employees use more care
                prefix = f"{region}{'E' if emp else 'R'}"
                n = max(40, round(size * self.scale))
                # One 64-bit draw per person: age 12 bits, sex 10, birthday 9, frailty 10,
                # residence 16 + 7; list comprehensions, as this runs ~10^5 times.
                xs = [bits(64) for _ in range(n)]
                age_ = [ages[x & 4095] for x in xs]  # the pyramid's quantiles
                p_sx += [0 if (x >> 12) & 1023 < male else 1 for x in xs]
                ord0 = self.ord0
                p_birth += [ord0 - a * 365 - ((x >> 22) & 511) * 365 // 512
                            for x, a in zip(xs, age_, strict=True)]
                frail += [_FRAIL[(x >> 31) & 1023] * mult for x in xs]
                band0 += [AGE_BANDS[a] for a in age_]
                p_pool += [pool] * n
                p_id += [prefix + str(k).zfill(7) for k in range(1, n + 1)]
                res_ = [region] * n
                fil_ = ["none"] * n
                # Only draws in the tails can live away from home.
                for j in [j for j, x in enumerate(xs) if not 8520 <= (x >> 41) & 0xFFFF <= 64225]:
                    x, age = xs[j], age_[j]
                    u = ((x >> 41) & 0xFFFF) / 65536
                    c = x >> 57  # 7 bits for a destination
                    long_term = ((x >> 41) & 7) < 5  # ~62%: long-term residence filing
                    res, filing = region, "none"
                    if prov == "44":
                        if not big and age >= 60 and u < 0.03:  # retirees join children
                            res, filing = ("440100", "440100", "440300")[c % 3], "long_term"
                        elif not big and not emp and 18 <= age < 60 and u < 0.06:
                            res = ("440300", "440300", "440100", "440600")[c & 3]
                            filing = "long_term" if long_term else "temporary"
                        elif emp and age >= 60 and u > 0.98:  # retired back to the hometown
                            res, filing = HOMETOWNS[c % len(HOMETOWNS)], "long_term"
                    else:
                        away = 0.10 if (not emp and 18 <= age < 60) else 0.025
                        if u < away:  # migrant workers in Guangdong
                            res = migrate[prov][c]
                            filing = "long_term" if long_term else "temporary"
                        elif region != capital and u < away + 0.03:
                            res, filing = capital, "long_term"
                    res_[j], fil_[j] = res, filing
                p_res += res_
                p_filing += fil_
        self.p_id, self.p_sx, self.p_birth, self.p_pool = p_id, p_sx, p_birth, p_pool
        self.p_sex = [("M", "F")[s] for s in p_sx]
        self.p_res, self.p_filing = p_res, p_filing
        self.p_region = [self.pools[p][0] for p in p_pool]
        self.p_ins = [self.pools[p][1] for p in p_pool]
        self.p_frail, self.p_band0 = frail, band0
        self.p_tup = list(zip(p_id, self.p_sex, self.p_ins, self.p_region, p_pool, p_birth,
                                   strict=True))
        # Anomaly actors are set aside, so background care never blurs their story.
        self.reserved: set[int] = set()
        # Persons were made pool by pool: each pool is a contiguous range of indices.
        self.by_pool: dict[int, range] = {}
        first = 0
        for i in range(1, len(p_pool) + 1):
            if i == len(p_pool) or p_pool[i] != p_pool[first]:
                self.by_pool[p_pool[first]] = range(first, i)
                first = i

    @staticmethod
    @functools.cache
    def _age_table(bands: tuple) -> list[int]:
        """Age at each quantile k/4096 of a population pyramid given as bands."""
        cumb = _cum([w for *_, w in bands])
        ages = []
        for k in range(4096):
            u = (k + 0.5) / 4096 * cumb[-1]
            i = bisect.bisect_right(cumb, u)
            a, b, w = bands[i]
            frac = (u - (cumb[i - 1] if i else 0)) / w
            ages.append(a + min(b - a, int(frac * (b - a + 1))))
        return ages

    def _freeze_persons(self) -> None:
        frail = list(self.p_frail)
        for p in self.reserved:
            frail[p] = 0.0
        self.p_cum = {vt: _cum(map(lambda b, f, u=AGE_USE[vt]: u[b] * f, self.p_band0, frail))
                      for vt in VISIT_TYPES}

    def _find_person(self, rng: random.Random, pools: list[int], lo: int, hi: int) -> int:
        """Someone of ``pools`` aged lo..hi, living at home, not yet an anomaly actor."""
        for _ in range(100000):
            p = rng.choice(self.by_pool[rng.choice(pools)])
            if p in self.reserved or not lo <= self.age(p, 0) <= hi:
                continue
            if self.p_res[p] != self.p_region[p]:
                continue
            self.reserved.add(p)
            return p
        raise RuntimeError("no person fits")  # pragma: no cover - pools hold >= 40

    # ------------------------------------------------------------------ records
    def _make(self, p: int, d: int, sec: int, vt: str, inst: int, dxs: tuple, total: int,
              filing: str, tag: str, items: list | None = None, qty: int = 0, opi: int = 0,
              adm: int | None = None, dis: int | None = None,
              fund_rate: int | None = None) -> _Ev:
        """One settlement; the fund share follows the reimbursement rules."""
        if fund_rate is None:
            fund = self._fund(p, d, vt, inst, total, filing)
        else:
            fund = total * fund_rate // 1000 if total > 0 else 0
        ev = _Ev(p, inst, d, sec, vt, dxs, total, fund, items, qty, opi, filing, adm, dis, tag,
                 self.p_pool[p])
        self.events.append(ev)
        return ev

    def _fund(self, p: int, d: int, vt: str, inst: int, total: int, filing: str) -> int:
        """The fund's share of ``total`` (fen) under the reimbursement rules."""
        _pid, _sex, ins, home, _pool, birth = self.p_tup[p]
        rate, ded = RATES[(ins, vt, self.inst_level[inst])]
        if ins == "employee" and self.ord0 + d - birth >= _AGE60_DAYS:
            rate += 50  # retirees are reimbursed more
        if filing == "temporary":
            rate -= 100  # referred/temporary filings pay a lower share
        elif filing == "none" and self.inst_region[inst] != home:
            rate -= 200  # unfiled cross-region care is reimbursed less
        rate = min(rate, 950)
        return (total - ded) * rate // 1000 if total > ded else 0

    @staticmethod
    def _hour(rnd, kind: str) -> int:
        return _pick(rnd, _HOUR_CUM[kind]) * 3600 + int(rnd() * 3600)

    @staticmethod
    def _inpatient_items(bits, total: int, los: int, level: Any, surgical: bool) -> list:
        """Cost lines that sum exactly to ``total`` (fen)."""
        bed = min(los * BED_RATE_FEN[level], total * 2 // 5)
        nursing = min(los * (BED_RATE_FEN[level] * 3 // 5), (total - bed) // 6)
        rest = total - bed - nursing
        ln = _LN[0.3]
        ws = [s * ln[bits(13)] for s in ITEM_SHARES["surgical" if surgical else "medical"]]
        tw = sum(ws)
        amounts = [int(rest * w / tw) for w in ws]
        amounts[0] += rest - sum(amounts)  # rounding remainder to drugs: exact to the fen
        items = [("bed", bed, los), ("nursing", nursing, los)]
        items += [(c, a, None) for c, a in zip(("drug", "exam", "treatment", "material",
                                                "other"), amounts, strict=True)
                   if a > 0 or c == "drug"]
        return items

    def _stay(self, rng: random.Random, p: int, adm: int, los: int, inst: int, dx: str,
              filing: str, tag: str, cost_mult: float = 1.0, items: list | None = None,
              total: int | None = None, dxs: tuple | None = None) -> _Ev | None:
        """An inpatient stay: registered for the person, settled on the discharge day."""
        dis = adm + los
        self.stays.setdefault(p, []).append((adm, dis))
        if dis < 0 or dis >= self.days:
            return None  # discharged before the stream starts, or still in bed at its end
        rnd, bits = rng.random, rng.getrandbits
        info = DX_BY_CODE[dx]
        level = self.inst_level[inst]
        if dxs is None:
            dxs = self._secondaries(rnd, dx, self.age(p, dis), 0.55)
        if total is None:
            if self.p_pool[p] == self.overspend_pool and \
                    self.inst_region[inst] == self.p_region[p]:
                cost_mult *= OVERSPEND_FACTOR
            yuan = (info.ip_cost * LEVEL_IP_COST[level] * cost_mult
                    * (1.1 if self.inst_capital_l3[inst] else 1.0)
                    * (max(los, 1) / max(info.los, 1)) ** 0.6 * 1.12 ** (len(dxs) - 1)
                    * _LN[0.35][bits(13)])
            total = max(50000, int(yuan * 100))
        if items is None:
            items = self._inpatient_items(bits, total, los, level, info.surgical)
        return self._make(p, dis, self._hour(rnd, "inpatient"), "inpatient", inst, dxs, total,
                          filing, tag, items=items, adm=adm, dis=dis)

    def _visit(self, rng: random.Random, p: int, d: int, vt: str, inst: int, filing: str,
               tag: str, dx: str | None = None, cost_mult: float = 1.0,
               fund_rate: int | None = None, sec: int | None = None) -> _Ev:
        """An outpatient, emergency or pharmacy settlement (the slow, general path)."""
        rnd, bits = rng.random, rng.getrandbits
        if dx is None:
            dx = self._dx(rnd, p, d, vt)
        op_cost = DX_BY_CODE[dx].op_cost
        qty = opi = 0
        if vt == "pharmacy":
            yuan = (op_cost * 0.6 if rnd() < 0.6 else 60) * _LN[0.7][bits(13)]
            dxs = self.dx1[dx] if rnd() < 0.6 else ()
            qty = 1 + int(rnd() * 6)
        else:
            yuan = op_cost * LEVEL_OP_COST[self.inst_level[inst]] * _LN[0.55][bits(13)]
            if vt == "emergency":
                yuan *= 1.6
            dxs = self._secondaries(rnd, dx, self.age(p, d), 0.12)
            if vt == "outpatient" and self.inst_items[inst]:
                opi = 1 if rnd() < 0.8 else 2
        total = max(600, int(yuan * cost_mult * 100))
        if sec is None:
            sec = self._hour(rnd, vt)
        return self._make(p, d, sec, vt, inst, dxs, total, filing, tag, qty=qty, opi=opi,
                          fund_rate=fund_rate)

    def _filing_for(self, p: int, inst: int) -> str:
        treat, home = self.inst_region[inst], self.p_region[p]
        if treat == home:
            return "none"
        if self.p_res[p] == treat:
            return self.p_filing[p]
        return "temporary"

    def _truth(self, anomaly: str, kind: str, subject: Any, regions: list[str],
               evs: list[_Ev], note: str, window_start: int | None = None,
               **extra: Any) -> None:
        times = sorted(self.settled_at(e) for e in evs)
        start = times[0]
        if window_start is not None:
            start = min(start, f"{self.dstr[window_start]}T00:00:00+08:00")
        entry = {"anomaly": anomaly, "subject": {"kind": kind, "id": subject},
                 "regions": list(dict.fromkeys(regions)),
                 "window": {"start": start, "end": times[-1]},
                 "settlement_ids": list(evs), "note": note}
        entry.update(extra)
        self.truth.append(entry)

    # ------------------------------------------------------------------ anomalies (stays)
    def _month_window(self, first: int, length: int) -> tuple[int, int] | None:
        """Days [a, b] inside one calendar month from ``first``, at most ``length`` long."""
        d = max(first, 0)
        while d < self.days:
            dt = self.dates[d]
            month_end = d + calendar.monthrange(dt.year, dt.month)[1] - dt.day
            b = min(d + length - 1, month_end, self.days - 1)
            if b - d + 1 >= min(4, self.days, length):
                return d, b
            d = month_end + 1
        return None

    def _plan_anomalies(self) -> None:
        """Choose the anomaly actors first, then settle their stays and visits."""
        self.overspend_pool = self.pool_index[OVERSPEND_POOL]
        rng = self.rng("anomaly-stays")
        rnd = rng.random
        pi = self.pool_index
        days = self.days

        # (a) unfiled cross-region inpatient runs: the first within the first 10 days.
        runs = [("H440300008", self._month_window(0, 10), 11,
                 ("深圳 L2 hospital admitting patients insured in eastern/western Guangdong "
                  "with no filing (未备案), within the first days"))]
        if days >= 20:
            runs.append(("H440600005", self._month_window(days // 2, 12), 9,
                         "佛山 L2 hospital with a later run of unfiled cross-region stays"))
        far = [pi[(r, "resident")] for r in ("440900", "441500", "445200")] + \
              [pi[("445200", "employee")]]
        unfiled = []
        for iid, win, n, note in runs:
            if win is None:
                continue
            a, b = win
            stays = []
            for k in range(n):
                p = self._find_person(rng, far, 18, 75)
                los = rng.randint(3, 7)
                dis = a + (k * (b - a + 1)) // n
                dx = rng.choice(("J18.9", "K35.8", "I63.9", "K80.2", "M51.2", "N20.0", "J44.1"))
                stays.append((p, dis - los, los, self.inst_by_id[iid], dx))
            unfiled.append((iid, note, stays))

        # (c) phantom bed: long stays at county hospitals, mostly bed and nursing, while
        # the same person is billed at a clinic or pharmacy elsewhere.
        county = [i for i in range(len(self.inst_id)) if self.inst_manual[i]
                  and self.inst_type[i] == "hospital" and self.inst_region[i][:2] == "44"]
        phantom = []
        for k in range(5 if days >= 3 else 0):
            inst = county[(k * 7 + rng.randrange(len(county))) % len(county)]
            region = self.inst_region[inst]
            p = self._find_person(rng, [pi[(region, "resident")], pi[(region, "employee")]],
                                  55, 88)
            los = rng.randint(18, 32)
            dis = rng.randint(min(days - 1, max(2, days // 3)), days - 1)
            dx = rng.choice(("I10", "E11.9", "M54.5", "M17.9", "I25.1"))
            phantom.append((p, dis - los, los, inst, dx))

        # (d) overlapping stays: the same person in two hospitals at once.
        overlap = []
        for _ in range(2 if days >= 4 else 0):
            p = self._find_person(rng, [pi[(r, t)] for r in ("440900", "445200", "440600")
                                        for t in ("employee", "resident")], 40, 85)
            i1 = self._inst(rnd, self.p_region[p], "ip_minor", False)
            i2 = self._inst(rnd, "440100", "ip_major", False)
            los2 = rng.randint(4, 8)
            dis2 = rng.randint(min(days - 1, max(1, days // 2)), days - 1)
            adm2 = dis2 - los2
            adm1 = adm2 - rng.randint(2, 4)
            dis1 = rng.randint(max(adm2 + 1, 0), dis2)  # still in bed when admitted again
            dx = rng.choice(("I63.9", "J18.9", "I50.9", "E11.9", "K80.2"))
            overlap.append((p, (adm1, dis1 - adm1, i1, dx), (adm2, los2, i2, dx)))

        # (e) split admissions: discharged, readmitted 1-3 days later for the same thing.
        split = []
        for _ in range(3 if days >= 6 else 0):
            p = self._find_person(rng, [pi[(r, t)] for r in REGIONS[:6] + ["430100", "450100"]
                                        for t in ("employee", "resident")], 45, 85)
            inst = self._inst(rnd, self.p_region[p], "ip_minor", False)
            dx = rng.choice(("I63.9", "J44.1", "E11.9", "N18.5", "I50.9", "J18.9"))
            los1, gap, los2 = rng.randint(5, 9), rng.randint(1, 3), rng.randint(3, 8)
            dis2 = rng.randint(min(days - 1, max(gap + 1, (days * 2) // 3)), days - 1)
            adm2 = dis2 - los2
            if adm2 - gap < 0:  # keep the first discharge inside the stream
                adm2 = gap
                los2 = dis2 - adm2
            dis1 = adm2 - gap
            split.append((p, inst, dx, (dis1 - los1, los1), (adm2, los2), gap))

        self._freeze_persons()
        self._settle_anomalies(rng, unfiled, phantom, overlap, split)

    def _settle_anomalies(self, rng: random.Random, unfiled, phantom, overlap, split) -> None:
        rnd = rng.random
        dstr = self.dstr
        for iid, note, stays in unfiled:
            evs = [ev for p, adm, los, inst, dx in stays
                   if (ev := self._stay(rng, p, adm, los, inst, dx, "none", "anomaly"))]
            if evs:
                regions = [self.inst_region[evs[0].inst]] + sorted(
                    {self.p_region[e.p] for e in evs})
                self._truth("unfiled_cross_region", "institution", iid, regions, evs, note,
                            expected={"settlement_count": len(evs),
                                      "month": self.month[evs[0].day]})
        for p, adm, los, inst, dx in phantom:
            bed = los * BED_RATE_FEN[self.inst_level[inst]]
            nursing = los * rng.randint(2500, 4000)
            items = [("bed", bed, los), ("nursing", nursing, los),
                     ("drug", int(bed * (0.5 + 0.4 * rnd())), None),
                     ("exam", rng.randint(8000, 30000), None),
                     ("treatment", rng.randint(3000, 15000), None),
                     ("other", rng.randint(2000, 8000), None)]
            total = sum(a for _, a, _ in items)
            ev = self._stay(rng, p, adm, los, inst, dx, "none", "anomaly", items=items,
                            total=total, dxs=self.dx1[dx])
            if ev is None:
                continue
            region = self.p_region[p]
            first, last = max(0, adm + 1), min(self.days - 1, adm + los - 1)
            outside = []
            for k in range(rng.randint(2, 4)):
                vt = "pharmacy" if k % 2 else "outpatient"
                other = self._inst(rnd, region, vt, False)
                while other == inst:
                    other = self._inst(rnd, region, vt, False)
                outside.append(self._visit(rng, p, rng.randint(first, last), vt, other, "none",
                                           "anomaly", dx=dx))
            share = round((bed + nursing) / total, 3)
            self._truth("phantom_bed", "settlement", ev, [region], [ev] + outside,
                        f"{los}-day stay for {dx} at {self.inst_id[inst]}: bed and nursing "
                        f"{share:.0%} of the cost, little treatment; meanwhile "
                        f"{len(outside)} outpatient/pharmacy settlements elsewhere",
                        window_start=adm, person_id=self.p_id[p],
                        expected={"length_of_stay": los, "bed_nursing_share": share})
        for p, s1, s2 in overlap:
            evs = [ev for adm, los, inst, dx in (s1, s2)
                   if (ev := self._stay(rng, p, adm, los, inst, dx,
                                        self._filing_for(p, inst), "anomaly"))]
            if len(evs) == 2:
                a, b = evs
                self._truth("overlapping_stay", "person", self.p_id[p],
                            [self.p_region[p], self.inst_region[b.inst]], evs,
                            f"inpatient at {self.inst_id[a.inst]} ({dstr[a.adm]}..{dstr[a.dis]})"
                            f" and at {self.inst_id[b.inst]} ({dstr[b.adm]}..{dstr[b.dis]})",
                            window_start=s1[0])
        for p, inst, dx, (adm1, los1), (adm2, los2), gap in split:
            filing = self._filing_for(p, inst)
            e1 = self._stay(rng, p, adm1, los1, inst, dx, filing, "anomaly",
                            dxs=self._secondaries(rnd, dx, self.age(p, 0), 0.5))
            e2 = self._stay(rng, p, adm2, los2, inst, dx, filing, "anomaly", dxs=self.dx1[dx])
            if e1 and e2:
                self._truth("split_admission", "person", self.p_id[p],
                            [self.inst_region[inst], self.p_region[p]], [e1, e2],
                            f"discharged {dstr[e1.dis]}, readmitted {dstr[e2.adm]} ({gap} "
                            f"day(s) later) to {self.inst_id[inst]} for {dx}",
                            window_start=adm1, expected={"gap_days": gap})

    # ------------------------------------------------------------------ background
    def _background_inpatient(self) -> None:
        rng = self.rng("inpatient")
        rnd, gauss, bits = rng.random, rng.gauss, rng.getrandbits
        cum = self.p_cum["inpatient"]
        ln = _LN[0.45]
        base = BASE_DAILY["inpatient"] * self.scale
        for adm in range(self.lo, self.days):
            mu = base * RHYTHM["inpatient"][self.kind[adm]]
            n = max(0, round(mu + math.sqrt(mu) * gauss()))
            for _ in range(n):
                for _try in range(20):
                    p = bisect.bisect_right(cum, rnd() * cum[-1])
                    dx = self._dx(rnd, p, max(adm, 0), "inpatient")
                    los = max(1, round(DX_BY_CODE[dx].los * ln[bits(13)]))
                    los = min(los, 60 if dx[0] == "F" else 45)
                    if self.kind.get(adm + los) == 2 and rnd() < 0.5:
                        while self.kind.get(adm + los) == 2:
                            los += 1  # half the rest-day discharges wait for a workday
                    s = self.stays.get(p)
                    # No stay within a week of another: background stays are clean, so
                    # overlapping and split admissions exist only where injected.
                    if s and any(a - 7 <= adm + los and adm <= b + 7 for a, b in s):
                        continue
                    break
                else:
                    continue
                if adm + los >= 0:
                    self._bg_stay(rng, p, adm, los, dx)

    def _bg_stay(self, rng: random.Random, p: int, adm: int, los: int, dx: str) -> None:
        rnd = rng.random
        home, res = self.p_region[p], self.p_res[p]
        major = DX_BY_CODE[dx].ip_cost >= MAJOR_COST
        prov = res[:2]
        capital = PROVINCES[prov]["capital"]
        siphon = 0.0
        if res != capital:
            siphon = (0.10 + 0.14 * major) if prov == "44" else (0.05 + 0.08 * major)
        border = BORDER_REFERRALS.get(prov) if res == home else None
        if border and rnd() < border[1]:  # referred across the provincial border
            inst = self.inst_by_id[border[0]]
            self._stay(rng, p, adm, los, inst, dx, "temporary", "bg")
            return
        if rnd() < siphon:  # 虹吸: referred to the capital's tertiary hospitals
            treat, purpose = capital, "ip_l3"
            filing = "none" if treat == home else "temporary"
        else:
            treat, purpose = res, "ip_major" if major else "ip_minor"
            filing = "none" if treat == home else self.p_filing[p]
        inst = self._inst(rnd, treat, purpose, treat[:2] != home[:2])
        self._stay(rng, p, adm, los, inst, dx, filing, "bg")

    def _background_visits(self) -> None:
        """Outpatient, pharmacy and emergency settlements: the bulk, so a lean loop."""
        rng = self.rng("visits")
        rnd, gauss, bits = rng.random, rng.gauss, rng.getrandbits
        br = bisect.bisect_right
        stays, in_stay, append, Ev = self.stays, self.in_stay, self.events.append, _Ev
        p_ins, p_pool = self.p_ins, self.p_pool
        p_region, p_res, p_filing = self.p_region, self.p_res, self.p_filing
        p_birth, p_sx, ord0 = self.p_birth, self.p_sx, self.ord0
        inst_level, inst_items = self.inst_level, self.inst_items
        sec_codes, sec_cum, dx1 = self.sec_codes, self.sec_cum, self.dx1
        travel_cum = _cum([3 if r[:2] == "44" else 1 for r in REGIONS])
        ln_op, ln_ph = _LN[0.55], _LN[0.7]
        for d in range(self.days):
            kind = self.kind[d]
            for vt in ("outpatient", "pharmacy", "emergency"):
                is_ph, is_em, is_op = vt == "pharmacy", vt == "emergency", vt == "outpatient"
                cum = self.p_cum[vt]
                tw = cum[-1]
                dxt = self.dx_tab[vt]
                local = {r: self.tables[(r, vt, False)] for r in REGIONS}
                networked = {r: self.tables[(r, vt, True)] for r in REGIONS}
                rates = {ins: {lvl: RATES[(ins, vt, lvl)][0] for lvl in ("C", "P", 1, 2, 3)
                               if (ins, vt, lvl) in RATES} for ins in ("employee", "resident")}
                hours = _HOUR_CUM[vt]
                hw = hours[-1]
                mu = BASE_DAILY[vt] * self.scale * RHYTHM[vt][kind] * (1 + 0.04 * gauss())
                n = max(0, round(mu + math.sqrt(mu) * gauss()))
                for _ in range(n):
                    p = br(cum, rnd() * tw)
                    if p in stays and in_stay(p, d):
                        continue  # in a hospital bed today: no visits elsewhere
                    home, res = p_region[p], p_res[p]
                    if is_em and rnd() < 0.04:  # taken ill while travelling
                        treat = REGIONS[br(travel_cum, rnd() * travel_cum[-1])]
                        filing = "none" if treat == home else "emergency"
                        net = False
                    elif res == home:
                        treat, filing, net = home, "none", False
                    else:
                        treat = res
                        filing = "none" if (not is_em and rnd() < 0.01) else p_filing[p]
                        net = treat[:2] != home[:2]
                    rows, icum = networked[treat] if net else local[treat]
                    inst = rows[br(icum, rnd() * icum[-1])]
                    age = (ord0 + d - p_birth[p]) * 10000 // 3652425
                    codes, dcum, costs = dxt[AGE_BANDS[age] * 2 + p_sx[p]]
                    k = br(dcum, rnd() * dcum[-1])
                    code = codes[k]
                    qty = opi = 0
                    if is_ph:
                        yuan = (costs[k] * 0.6 if rnd() < 0.6 else 60) * ln_ph[bits(13)]
                        dxs = dx1[code] if rnd() < 0.6 else ()
                        qty = 1 + int(rnd() * 6)
                    else:
                        yuan = costs[k] * LEVEL_OP_COST[inst_level[inst]] * ln_op[bits(13)]
                        if is_em:
                            yuan *= 1.6
                        dxs = dx1[code]
                        if rnd() < (0.12 if age >= 30 else 0.036):
                            c = sec_codes[br(sec_cum, rnd() * sec_cum[-1])]
                            if c != code:
                                dxs = (code, c)
                        if is_op and inst_items[inst]:
                            opi = 1 if rnd() < 0.8 else 2
                    total = max(int(yuan * 100), 600)
                    # The fund share, as in _make (no deductible outside inpatient care).
                    ins = p_ins[p]
                    rate = rates[ins][inst_level[inst]]
                    if age >= 60 and ins == "employee":
                        rate += 50
                    if filing == "temporary":
                        rate -= 100
                    elif filing == "none" and treat != home:
                        rate -= 200
                    rate = min(rate, 950)
                    append(Ev(p, inst, d, br(hours, rnd() * hw) * 3600 + int(rnd() * 3600), vt,
                              dxs, total, total * rate // 1000, None, qty, opi, filing, None,
                              None, "bg", p_pool[p]))

    def _border_regulars(self) -> None:
        """The border hospital's regular cross-province patients (``BORDER_REGULARS``)."""
        rng = self.rng("regulars")
        rnd = rng.random
        iid, regions, cohort = BORDER_REGULARS
        inst = self.inst_by_id[iid]
        pools = [self.pool_index[(r, t)] for r in regions for t in ("employee", "resident")]
        self.regulars: set[int] = set()
        weekday = [self.dates[d].weekday() for d in range(self.days)]
        chosen = []
        for dx, n in cohort.items():
            sex = DX_BY_CODE[dx].sex
            for _ in range(n):
                for _try in range(10000):
                    p = rng.choice(self.by_pool[rng.choice(pools)])
                    if (p not in self.reserved and p not in self.regulars
                            and self.p_res[p] == self.p_region[p] and 35 <= self.age(p, 0) <= 80
                            and (sex not in ("F", "M") or self.p_sex[p] == sex)):
                        break
                else:  # pragma: no cover - the pools hold >= 40 persons each
                    continue
                self.regulars.add(p)
                chosen.append((p, dx))
        for k, (p, dx) in enumerate(chosen):
            if dx == "N18.5":  # haemodialysis: Mon/Wed/Fri or Tue/Thu/Sat, holidays too
                days_on, mult = ((0, 2, 4) if rnd() < 0.5 else (1, 3, 5)), 1.0
            else:  # cancer day care: one workday a week, the patients spread over the week
                days_on, mult = (k % 5,), BORDER_CANCER_COST
            for d in range(self.days):
                if weekday[d] not in days_on or self.in_stay(p, d):
                    continue
                if dx != "N18.5" and self.kind[d] == 2:
                    continue  # a public holiday: the day ward is closed
                self._visit(rng, p, d, "outpatient", inst, "temporary", "bg", dx=dx,
                            cost_mult=mult)

    # ------------------------------------------------------------------ institution anomalies
    def _surge_onset(self) -> int | None:
        """Five weeks of baseline when the period allows, else the last third; none
        without a week of baseline (days < 11)."""
        if self.days >= 42:
            return max(35, (self.days * 2) // 3)
        onset = (self.days * 2) // 3
        return onset if onset >= 7 else None

    def _inject_surge(self) -> None:
        """(b) One hospital's cross-province cost jumps after the onset (brokered patients)."""
        rng = self.rng("surge")
        rnd = rng.random
        iid = "H440900001"
        inst = self.inst_by_id[iid]
        onset = self._surge_onset()
        if onset is None:
            return
        p_region = self.p_region

        def cross(e: _Ev) -> bool:
            return e.inst == inst and p_region[e.p][:2] != "44"
        base = [e for e in self.events if e.day < onset and cross(e)]
        per_day = max(1.0, len(base) / onset)
        pre_week = sum(e.total for e in base) * 7 / onset
        # Inject until the period's cross-province cost is SURGE_RATIO times the
        # baseline's weekly rate, and at least SURGE_MIN_EXCESS a week above it: in a
        # small sample one costly stay moves a week by that much, so a surge must be
        # larger than the baseline's own spread to be one.
        base_week = max(pre_week, 2_000_000 * self.scale)
        target = max(base_week * SURGE_RATIO, base_week + SURGE_MIN_EXCESS) * (
            self.days - onset) / 7
        current = sum(e.total for e in self.events if e.day >= onset and cross(e))
        gx = [self.pool_index[(r, t)] for r in ("450100", "450300")
              for t in ("employee", "resident")]
        extra: list[_Ev] = []
        n_days = self.days - onset
        k = 0
        while current < target or k < n_days * per_day:
            d = onset + k % n_days
            k += 1
            p = rng.choice(self.by_pool[rng.choice(gx)])
            if p in self.reserved or p in self.regulars or self.in_stay(p, d):
                continue
            ev: _Ev | None
            if rnd() < 0.35:
                los = rng.randint(3, 8)
                s = self.stays.get(p)
                if s and any(a - 7 <= d and d - los <= b + 7 for a, b in s):
                    continue
                ev = self._stay(rng, p, d - los, los, inst, self._dx(rnd, p, d, "inpatient"),
                                "temporary", "anomaly", cost_mult=1.3)
            else:
                ev = self._visit(rng, p, d, "outpatient", inst, "temporary", "anomaly",
                                 cost_mult=1.3)
            if ev:
                extra.append(ev)
                current += ev.total
        if not extra:
            return
        pre = sum(e.total for e in base) * 7 / onset
        post = sum(e.total for e in self.events if e.day >= onset and cross(e)) * 7 / (
            self.days - onset)
        weekly = [0] * ((self.days + 6) // 7)  # 7-day buckets from the start
        for e in self.events:
            if cross(e):
                weekly[e.day // 7] += e.total
        regions = [self.inst_region[inst]] + sorted({p_region[e.p] for e in extra})
        self._truth("cross_province_surge", "institution", iid, regions, extra,
                    f"cross-province settlement cost at {iid} (茂名) jumps from "
                    f"{self.dstr[onset]}: patients insured in Guangxi brought in",
                    window_start=onset,
                    expected={"onset": self.dstr[onset],
                              "baseline_weekly_cost": _yuan(int(pre)),
                              "surge_weekly_cost": _yuan(int(post)),
                              "ratio": round(post / pre, 2) if pre else None,
                              "baseline_weeks": round(onset / 7, 1),
                              "weekly_cost": [_yuan(w) for w in weekly]})

    def _inject_chain(self) -> None:
        """(f) One chain's branches in three provinces bill inflated and forged claims."""
        rng = self.rng("chain")
        rnd = rng.random
        chain = "PCH002"
        branches = [i for i in range(len(self.inst_id)) if self.inst_chain[i] == chain]
        if self.days < 2:
            return
        onset = max(1, self.days // 3)
        flagged: list[_Ev] = []
        bset = set(branches)
        for ev in self.events:  # half the genuine sales: the same visit, a bigger invoice
            if ev.inst in bset and ev.day >= onset and ev.tag == "bg" and rnd() < 0.5:
                ev.total = int(ev.total * (2.2 + 1.5 * rnd()))
                ev.fund = ev.total * rng.randint(820, 900) // 1000
                ev.qty *= 3
                ev.tag = "anomaly"
                flagged.append(ev)
        lam = 3.0 * self.scale  # and forged sales on the cards of people never there
        for d in range(onset, self.days):
            for b in branches:
                for _ in range(max(0, round(lam + math.sqrt(lam) * rng.gauss()))):
                    pool = (self.pool_index[(self.inst_region[b],
                                             rng.choice(("employee", "resident")))]
                            if rnd() < 0.5 else rng.randrange(len(self.pools)))
                    p = rng.choice(self.by_pool[pool])
                    if p in self.reserved or self.in_stay(p, d):
                        continue
                    dx = rng.choice(("B18.1", "E11.9", "I10", "C34.9", "I25.1", "N18.5"))
                    flagged.append(self._visit(rng, p, d, "pharmacy", b, self._filing_for(p, b),
                                               "anomaly", dx=dx, cost_mult=rng.uniform(4, 9),
                                               fund_rate=rng.randint(850, 920)))
        if not flagged:
            return
        regions = sorted({self.inst_region[b] for b in branches})
        self._truth("pharmacy_chain_anomaly", "chain", chain, regions, flagged,
                    f"{self.chain_name[chain]} ({chain}): branches in "
                    f"{len({r[:2] for r in regions})} provinces bill inflated and forged drug "
                    f"claims from {self.dstr[onset]}", window_start=onset,
                    expected={"branches": [self.inst_id[b] for b in branches],
                              "onset": self.dstr[onset]})

    def _siphon_month(self) -> str | None:
        """The last full calendar month of the period that follows three full months."""
        last = self.dates[self.days - 1]
        full = []
        for m in sorted({self.month[d] for d in range(self.days)}):
            y, mo = int(m[:4]), int(m[5:])
            if date(y, mo, 1) >= self.start and date(y, mo, calendar.monthrange(y, mo)[1]) <= last:
                full.append(m)
        for m in reversed(full):
            if all(previous_month(m, k) in full for k in range(1, 4)):
                return m
        return None

    def _pool_stays(self, pool: int, capital: str) -> dict[str, list[int]]:
        """Per month, a pool's inpatient stays and those at the capital's tertiary
        hospitals, counted as ``siphon_shift`` counts the lines (a reversal is a negative
        stay in its own month; malformed lines and re-sends do not count)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        month, region, level = self.month, self.inst_region, self.inst_level
        for ev in self.events:
            if ev.pool != pool or ev.vt != "inpatient" or ev.tag not in (
                    "bg", "anomaly", "reversal", "resettle"):
                continue
            sign = -1 if ev.tag == "reversal" else 1
            acc = out[month[ev.day]]
            acc[0] += sign
            if region[ev.inst] == capital and level[ev.inst] == 3:
                acc[1] += sign
        return out

    @staticmethod
    def _siphon_z(cur: list[int], base: list[list[int]]) -> tuple[float, float]:
        """(excess share, two-proportion z) of a month over its baseline months, as the
        rule computes them (the baseline share is the mean of the months' shares)."""
        share = cur[1] / cur[0]
        base_share = sum(c / n for n, c in base) / len(base)
        excess = share - base_share
        base_n = sum(n for n, _ in base)
        pooled = (cur[1] + sum(c for _, c in base)) / (cur[0] + base_n)
        var = pooled * (1 - pooled) * (1 / cur[0] + 1 / base_n)
        return excess, (excess / math.sqrt(var) if var > 0 else math.inf)

    def _inject_siphon(self) -> None:
        """(g) 虹吸效应: one pool's inpatients go to the capital's tertiary hospitals.

        In the last full calendar month that follows three full months, stays of
        ``SIPHON_POOL``'s insured at their local hospitals are settled instead at the
        capital's level-3 hospitals (a referral: filing ``temporary``, tertiary costs
        and reimbursement), one at a time until the month's share there is at least
        ``SIPHON_MIN_PP`` points over the mean share of the three months before, with a
        two-proportion z of at least ``SIPHON_MIN_Z``. In a small sample the four
        months are first topped up to ``SIPHON_MIN_STAYS`` stays each with ordinary
        stays of the pool (the background's own referral pattern).
        """
        month = self._siphon_month()
        if month is None:
            return
        rng = self.rng("siphon")
        rnd, bits = rng.random, rng.getrandbits
        region, ins = SIPHON_POOL
        pool = self.pool_index[SIPHON_POOL]
        capital = PROVINCES[region[:2]]["capital"]
        months = [previous_month(month, k) for k in (3, 2, 1)] + [month]
        persons = [p for p in self.by_pool[pool]
                   if self.p_res[p] == region and p not in self.reserved]
        busy: dict[int, set[int]] = defaultdict(set)  # days a person has a settlement
        for ev in self.events:
            if ev.pool == pool:
                busy[ev.p].add(ev.day)
        counts = self._pool_stays(pool, capital)
        ln = _LN[0.45]
        for m in months:
            days_in = [d for d in range(self.days) if self.month[d] == m]
            need = SIPHON_MIN_STAYS - counts[m][0]
            for _ in range(need * 200):
                if need <= 0:
                    break
                p = rng.choice(persons)
                dis = rng.choice(days_in)
                dx = self._dx(rnd, p, dis, "inpatient")
                los = min(max(1, round(DX_BY_CODE[dx].los * ln[bits(13)])),
                          60 if dx[0] == "F" else 45)
                adm = dis - los
                s = self.stays.get(p)
                if s and any(a - 7 <= dis and adm <= b + 7 for a, b in s):
                    continue
                if any(d in busy[p] for d in range(adm, dis + 1)):
                    continue
                n_events = len(self.events)
                self._bg_stay(rng, p, adm, los, dx)
                for ev in self.events[n_events:]:
                    busy[p].add(ev.day)
                need -= 1
        counts = self._pool_stays(pool, capital)
        base = [counts[m] for m in months[:3]]
        cur = counts[month]
        if cur[0] <= 0 or any(n <= 0 for n, _ in base):
            return  # pragma: no cover - the months were topped up above
        candidates = [ev for ev in self.events
                      if ev.pool == pool and ev.vt == "inpatient" and ev.tag == "bg"
                      and not ev.variant and self.month[ev.day] == month
                      and self.inst_region[ev.inst] == region and self.p_res[ev.p] == region]
        rng.shuffle(candidates)
        moved: list[_Ev] = []
        excess, z = self._siphon_z(cur, base)
        for ev in candidates:
            if excess * 100 >= SIPHON_MIN_PP and z >= SIPHON_MIN_Z:
                break
            inst = self._inst(rnd, capital, "ip_l3", False)
            # The same case at a tertiary hospital of the capital: its cost level,
            # cost lines and reimbursement (a referral, 转诊备案).
            total = max(50000, int(ev.total * LEVEL_IP_COST[3] * 1.1
                                   / LEVEL_IP_COST[self.inst_level[ev.inst]]))
            ev.items = self._inpatient_items(bits, total, ev.dis - ev.adm, 3,
                                             DX_BY_CODE[ev.dxs[0]].surgical)
            ev.inst, ev.total, ev.filing, ev.tag = inst, total, "temporary", "anomaly"
            ev.fund = self._fund(ev.p, ev.day, "inpatient", inst, total, "temporary")
            moved.append(ev)
            cur[1] += 1
            excess, z = self._siphon_z(cur, base)
        if not moved:
            return  # pragma: no cover - a month with no local stay to move
        base_share = sum(c / n for n, c in base) / len(base)
        name = f"{CITY_NAME[region]} {ins} pool"
        self.truth.append({
            "anomaly": "siphon_shift", "subject": {"kind": "pool", "id": f"{region}:{ins}"},
            "regions": [region, capital], "window": month_window(month),
            "settlement_ids": moved,
            "note": (f"{name}: {len(moved)} of its {cur[0]} inpatient stays in {month} "
                     f"referred to {CITY_NAME[capital]}'s tertiary hospitals instead of local "
                     f"ones (虹吸效应): {cur[1] / cur[0]:.0%} of its stays there, against "
                     f"{base_share:.0%} in the three months before"),
            "expected": {"month": month, "baseline_share": round(base_share, 4),
                         "shifted_share": round(cur[1] / cur[0], 4), "stays": cur[0],
                         "capital_stays": cur[1], "moved_stays": len(moved),
                         "baseline_months": [{"month": m, "stays": n, "capital_stays": c}
                                             for m, (n, c) in zip(months, base)],
                         "z": round(z, 2)}})

    # ------------------------------------------------------------------ companion cases
    def _inject_companions(self) -> None:
        """(g) Varied cases for the deterministic companions, and their look-alikes.

        Planted after the stream noise (which they do not change) on persons with no
        other stay within three weeks and no visit while in bed, so each story is what
        its truth entry says. Overlapping stays: one shared night, a short stay nested
        in a long one, a cross-province pair, two hospitals of one city. Split
        admissions: readmitted the day of discharge, on the 15th day, for the other
        code of the same category, away from home. Look-alikes the rules must leave
        alone (truth ``"anomaly": "lookalike"`` with the ``rule_id``): a same-day
        transfer, an overlap reversed (冲正), readmissions after 16+ days, for another
        condition, at another hospital, and planned chemotherapy cycles (Z51).
        Chains: one of the clean chains that span provinces (PCH001, PCH003) turns
        bad in one of two quieter ways — its branches of one province inflate
        invoices, or it bills a handful of harvested cards in two provinces within
        hours — while a one-province chain's claims jump (out of the rule's scope) and
        a traveller buys at a clean chain in two provinces on one day.
        """
        rng = self.rng("companions")
        if self.days < 6:
            return
        days_of: dict[int, set[int]] = defaultdict(set)
        for ev in self.events:
            days_of[ev.p].add(ev.day)
        self._busy = days_of
        self._companion_stays(rng)
        self._companion_chains(rng)

    #: Shapes of the varied phantom stays (``_inject_phantoms``), and how often each.
    PHANTOM_SHAPES = (("bed_heavy", 3), ("seen_elsewhere", 3), ("drug_padded", 2),
                      ("thin_care", 2), ("weekend_short", 2))

    def _inject_phantoms(self) -> None:
        """(h) Varied phantom bed stays (挂床住院), about 2% of the inpatient stays.

        The five stays of ``_plan_anomalies`` are the blatant kind (three to four
        weeks of bed and nursing, the person billed elsewhere meanwhile). Audits find
        quieter ones too, so these come in five shapes, each on a person with no other
        care within three weeks (their stay is the only story of those weeks), at a
        county or city hospital of levels 1-2 in Guangdong away from the surge's
        hospital and the hospital group, for chronic, low-acuity conditions (visits
        elsewhere at clinics and independent pharmacies, never a chain's branch):

        * ``bed_heavy`` — 12-26 days, bed and nursing 55-70% of the bill, maybe one
          pharmacy purchase elsewhere;
        * ``seen_elsewhere`` — an ordinary bill for an ordinary length, but the person
          is at a clinic or pharmacy elsewhere on 2-4 days of it (only the behaviour
          gives it away);
        * ``drug_padded`` — 6-12 days kept in bed to have chronic drugs paid as
          inpatient care: drugs 55-70%, almost no exams or treatment;
        * ``thin_care`` — a long (14-24 days) cheap stay: exams and treatment a third
          of the usual, nothing else odd;
        * ``weekend_short`` — admitted on a Friday or Saturday for 3-6 days, bed and
          nursing about half the bill, one visit elsewhere half the time.

        Planted last, with their own random stream, on persons of no other story:
        every other anomaly and the stream noise are as they were without them.
        """
        if self.days < 21:
            return
        rng = self.rng("phantoms")
        rnd = rng.random
        days_of: dict[int, set[int]] = defaultdict(set)
        for ev in self.events:
            days_of[ev.p].add(ev.day)
        self._busy = days_of
        surging = self.inst_by_id[BORDER_REGULARS[0]]
        hospitals = [i for i in range(len(self.inst_id)) if self.inst_type[i] == "hospital"
                     and self.inst_level[i] in (1, 2) and self.inst_region[i][:2] == "44"
                     and not self.inst_capital_l3[i] and i != surging
                     and self.inst_region[i] != "440100" and self.inst_chain[i] is None]
        # Sorted: a set's order follows str hashing, which differs per process.
        pools = [self.pool_index[(r, t)] for r in sorted({self.inst_region[i] for i in hospitals})
                 for t in ("employee", "resident")]
        stays = sum(1 for e in self.events if e.vt == "inpatient" and e.tag == "bg")
        shapes = [s for s, w in self.PHANTOM_SHAPES for _ in range(w)]
        chronic = ("I10", "E11.9", "M54.5", "M17.9", "I25.1", "I63.9", "J44.1")
        for n in range(max(len(shapes), round(0.02 * stays))):
            shape = shapes[n % len(shapes)]
            los = {"bed_heavy": (12, 26), "seen_elsewhere": (7, 16), "drug_padded": (6, 12),
                   "thin_care": (14, 24), "weekend_short": (3, 6)}[shape]
            los = rng.randint(*los)
            adm = self._span(rng, los)
            if adm is None:
                continue
            if shape == "weekend_short":
                while self.dates[adm].weekday() not in (4, 5):
                    adm -= 1
                if adm < 1:
                    continue
            p = self._free_person(rng, pools, adm, adm + los, lo=50, hi=90)
            if p is None:
                continue
            home = [i for i in hospitals if self.inst_region[i] == self.p_region[p]]
            if not home:
                continue
            inst = rng.choice(home)
            dx = rng.choice(chronic)
            items, total = (None, None) if shape == "seen_elsewhere" else \
                self._phantom_items(rng, shape, los, self.inst_level[inst])
            ev = self._stay(rng, p, adm, los, inst, dx, "none", "anomaly", items=items,
                            total=total, dxs=self.dx1[dx])
            if ev is None:
                continue
            visits = {"bed_heavy": rng.randint(0, 1), "seen_elsewhere": rng.randint(2, 4),
                      "drug_padded": rng.randint(0, 1), "thin_care": 0,
                      "weekend_short": int(rnd() < 0.5)}[shape]
            outside = []
            for day in sorted(rng.sample(range(adm + 1, adm + los), min(visits, los - 1))):
                vt = "pharmacy" if rnd() < 0.5 else "outpatient"
                # Never a chain's branch: a purchase there would move the chain's
                # claims, which pharmacy_chain_anomaly (and its bench) judges.
                for _try in range(20):
                    other = self._inst(rnd, self.p_region[p], vt, False)
                    if other != inst and self.inst_chain[other] is None:
                        break
                else:
                    continue
                outside.append(self._visit(rng, p, day, vt, other, "none", "anomaly", dx=dx))
            bed = sum(a for c, a, _ in ev.items if c in ("bed", "nursing"))
            share = round(bed / ev.total, 3)
            self._truth("phantom_bed", "settlement", ev, [self.p_region[p]], [ev] + outside,
                        f"{shape}: {los}-day stay for {dx} at {self.inst_id[inst]}, bed and "
                        f"nursing {share:.0%} of the cost, {len(outside)} settlement(s) "
                        f"elsewhere meanwhile", window_start=adm, person_id=self.p_id[p],
                        shape=shape,
                        expected={"length_of_stay": los, "bed_nursing_share": share})

    @staticmethod
    def _phantom_items(rng: random.Random, shape: str, los: int, level: int
                       ) -> tuple[list, int]:
        """Cost lines (fen, summing exactly to the total) of a phantom stay's shape."""
        u = rng.uniform
        if shape == "bed_heavy":
            shares = {"bed_nursing": u(0.55, 0.7), "exam": u(0.03, 0.07),
                      "treatment": u(0.02, 0.05), "material": 0.01, "other": 0.03}
        elif shape == "drug_padded":
            shares = {"bed_nursing": u(0.2, 0.3), "exam": u(0.02, 0.05),
                      "treatment": u(0.01, 0.04), "material": 0.01, "other": 0.02}
        elif shape == "thin_care":
            shares = {"bed_nursing": u(0.4, 0.5), "exam": u(0.05, 0.09),
                      "treatment": u(0.03, 0.06), "material": 0.03, "other": 0.06}
        else:  # weekend_short
            shares = {"bed_nursing": u(0.45, 0.55), "exam": u(0.03, 0.08),
                      "treatment": u(0.03, 0.07), "material": 0.02, "other": 0.05}
        rate = BED_RATE_FEN[level]
        bed = los * rate
        nursing = los * (rate * rng.randint(45, 65) // 100)
        total = int((bed + nursing) / shares.pop("bed_nursing"))
        rest = {c: int(total * s) for c, s in shares.items()}
        drug = total - bed - nursing - sum(rest.values())
        items = [("bed", bed, los), ("nursing", nursing, los), ("drug", drug, None)]
        items += [(c, a, None) for c, a in rest.items()]
        return items, total

    def _free_person(self, rng: random.Random, pools: list[int], first: int, last: int,
                     lo: int = 35, hi: int = 85, away: bool = False) -> int | None:
        """Someone of ``pools`` with no stay within 21 days of [first, last] and no
        settlement in it: their planted stays are the only care of those weeks."""
        siphon = self.pool_index[SIPHON_POOL]
        for _ in range(3000):
            p = rng.choice(self.by_pool[rng.choice(pools)])
            if (p in self.reserved or p in self.regulars or self.p_pool[p] == siphon
                    or not lo <= self.age(p, first) <= hi
                    or (self.p_res[p] != self.p_region[p]) != away):
                continue
            if any(a - 21 <= last and first <= b + 21 for a, b in self.stays.get(p, ())):
                continue
            if any(first - 1 <= d <= last + 1 for d in self._busy.get(p, ())):
                continue
            self.reserved.add(p)
            return p
        return None

    def _span(self, rng: random.Random, length: int) -> int | None:
        """A first day for a story ``length`` days long inside the period."""
        if length + 2 > self.days - 1:
            return None
        return rng.randint(1, self.days - 1 - length)

    def _companion_stays(self, rng: random.Random) -> None:
        rnd = rng.random
        pi = self.pool_index
        gd = [pi[(r, t)] for r in REGIONS if r[:2] == "44" for t in ("employee", "resident")]
        outer = [pi[(r, t)] for r in REGIONS if r[:2] != "44" for t in ("employee", "resident")]
        dstr = self.dstr
        medical = ("I63.9", "J18.9", "I50.9", "J44.1", "E11.9", "N18.5", "I20.0", "K29.7")

        def stays(p: int, plan: list[tuple[int, int, int, str, tuple | None]]) -> list:
            evs = []
            for adm, los, inst, dx, dxs in plan:
                ev = self._stay(rng, p, adm, los, inst, dx, self._filing_for(p, inst),
                                "anomaly", dxs=dxs)
                if ev is None:
                    return []
                evs.append(ev)
            return evs

        # The surge's hospital is left to the surge: a stay there would move its
        # cross-province baseline, which bench/surge_quality.py measures.
        surging = self.inst_by_id[BORDER_REGULARS[0]]

        def local(p: int, purpose: str = "ip_minor", region: str | None = None,
                  avoid: int | None = None) -> int:
            region = region or self.p_res[p]
            for _ in range(50):
                inst = self._inst(rnd, region, purpose, region[:2] != self.p_region[p][:2])
                if inst not in (avoid, surging):
                    return inst
            return avoid if avoid is not None else inst

        def where(evs) -> str:
            return "; ".join(f"{self.inst_id[e.inst]} {dstr[e.adm]}..{dstr[e.dis]}" for e in evs)

        # Overlapping stays (overlapping_stay) and look-alikes.
        shapes = ["one_night", "nested", "cross_province", "same_city", "same_city",
                  "transfer", "reversed"]
        for shape in shapes:
            dx = rng.choice(medical)
            if shape == "nested":
                los1, los2, off = rng.randint(16, 26), rng.randint(3, 6), rng.randint(3, 8)
            elif shape == "one_night":
                los1, los2 = rng.randint(4, 9), rng.randint(3, 8)
                off = los1 - 1
            elif shape == "transfer":
                los1, los2 = rng.randint(3, 9), rng.randint(4, 10)
                off = los1
            else:
                los1, los2 = rng.randint(5, 10), rng.randint(4, 9)
                off = rng.randint(1, los1 - 2)
            length = max(los1, off + los2) + 4
            a = self._span(rng, length)
            if a is None:
                continue
            p = self._free_person(rng, outer if shape == "cross_province" else gd, a,
                                  a + length)
            if p is None:
                continue
            first = local(p)
            if shape == "cross_province":
                second = local(p, "ip_major", rng.choice(("440100", "440900", "440300")))
            elif shape == "nested":
                capital = PROVINCES[self.p_region[p][:2]]["capital"]
                second = local(p, "ip_l3", capital, avoid=first)
            else:
                second = local(p, "ip_minor", avoid=first)
            if first == second:
                continue
            plan = [(a, los1, first, dx, None), (a + off, los2, second, dx, None)]
            evs = stays(p, plan)
            if len(evs) != 2:
                continue
            regions = [self.inst_region[evs[0].inst], self.inst_region[evs[1].inst],
                       self.p_region[p]]
            nights = min(evs[0].dis, evs[1].dis) - max(evs[0].adm, evs[1].adm)
            if shape == "transfer":
                self._truth("lookalike", "person", self.p_id[p], regions, evs,
                            f"same-day transfer, no shared night: {where(evs)}",
                            window_start=a, rule_id="overlapping_stay", injected=False)
                continue
            if shape == "reversed":
                late = evs[1]
                d = min(self.days - 1, late.day + rng.randint(1, 3))
                items = [(c, -x, None if q is None else -q) for c, x, q in late.items]
                rev = late.clone(day=d, sec=self._hour(rnd, "inpatient"), tag="reversal",
                                 total=-late.total, fund=-late.fund, items=items)
                rev.link = late
                late.variant = "reversed"
                self.events.append(rev)
                self._truth("lookalike", "person", self.p_id[p], regions, evs + [rev],
                            f"overlapping stays ({where(evs)}), the second reversed (冲正) "
                            f"on {dstr[d]}: a billing error corrected",
                            window_start=a, rule_id="overlapping_stay", injected=False)
                continue
            self._truth("overlapping_stay", "person", self.p_id[p], regions, evs,
                        f"{shape.replace('_', ' ')}: inpatient at {where(evs)}, {nights} "
                        "shared night(s)", window_start=a, expected={"overlap_nights": nights,
                                                                     "shape": shape})

        # Split admissions (split_admission) and look-alikes.
        shapes = ["same_day", "fifteen_days", "same_category", "away_from_home",
                  "sixteen_days_plus", "other_condition", "other_hospital", "chemotherapy"]
        for shape in shapes:
            dx = rng.choice(medical)
            los1, los2 = rng.randint(4, 10), rng.randint(3, 8)
            gap = {"same_day": 0, "fifteen_days": 15, "sixteen_days_plus": rng.randint(16, 30),
                   "chemotherapy": rng.randint(9, 12)}.get(shape, rng.randint(1, 14))
            length = los1 + gap + los2 + 2
            a = self._span(rng, length)
            if a is None:
                continue
            p = self._free_person(rng, gd + outer, a, a + length,
                                  away=shape == "away_from_home")
            if p is None:
                continue
            inst = local(p)
            second_inst, dxs1, dxs2, dx2 = inst, None, None, dx
            if shape == "same_category":
                # The same condition coded one digit apart, with other secondaries.
                dxs1 = (dx, "I10")
                dxs2 = (dx[:3] + (".8" if not dx.endswith(".8") else ".9"), "E78.5")
            elif shape == "other_condition":
                dx2 = rng.choice([c for c in ("S72.0", "K80.2", "N39.0", "K35.8")
                                  if c[:3] != dx[:3]])
            elif shape == "other_hospital":
                capital = PROVINCES[self.p_res[p][:2]]["capital"]
                second_inst = local(p, "ip_l3", capital, avoid=inst)
                if second_inst == inst:
                    continue
            elif shape == "chemotherapy":
                dx = dx2 = "C34.9"
                los1, los2 = rng.randint(2, 4), rng.randint(2, 4)
                dxs1 = dxs2 = ("Z51.1", "C34.9")
            plan = [(a, los1, inst, dx, dxs1), (a + los1 + gap, los2, second_inst, dx2, dxs2)]
            evs = stays(p, plan)
            if len(evs) != 2:
                continue
            regions = [self.inst_region[inst], self.p_region[p]]
            what = (f"{shape.replace('_', ' ')}: discharged {dstr[evs[0].dis]} from "
                    f"{self.inst_id[inst]} ({evs[0].dxs[0]}), readmitted {dstr[evs[1].adm]} "
                    f"to {self.inst_id[second_inst]} ({evs[1].dxs[0]}), {gap} day(s) later")
            if shape in ("sixteen_days_plus", "other_condition", "other_hospital",
                         "chemotherapy"):
                self._truth("lookalike", "person", self.p_id[p], regions, evs, what,
                            window_start=a, rule_id="split_admission", injected=False)
            else:
                self._truth("split_admission", "person", self.p_id[p], regions, evs, what,
                            window_start=a, expected={"gap_days": gap, "shape": shape})

    def _companion_chains(self, rng: random.Random) -> None:
        rnd = rng.random
        if self.days < 21:
            return
        linked = {id(e.link) for e in self.events if e.link is not None}
        by_chain: dict[str, list[int]] = defaultdict(list)
        for i, chain in enumerate(self.inst_chain):
            if chain and self.inst_type[i] == "pharmacy":
                by_chain[chain].append(i)
        onset = rng.randint(max(1, self.days // 3), max(1, self.days // 2))

        def genuine(ev) -> bool:  # a sale that no reversal, re-send or error refers to
            return ev.tag == "bg" and not ev.variant and id(ev) not in linked

        chain = rng.choice(("PCH001", "PCH003"))
        clean = "PCH003" if chain == "PCH001" else "PCH001"
        branches = by_chain[chain]
        shape = rng.choice(("one_province", "harvested_cards"))
        flagged: list[_Ev] = []
        provinces = sorted({self.inst_region[b][:2] for b in branches})
        if shape == "one_province":
            # The province where the chain has most branches inflates its invoices.
            counts = defaultdict(int)
            for b in branches:
                counts[self.inst_region[b][:2]] += 1
            prov = max(sorted(counts), key=counts.get)
            rate, lo, hi = rng.uniform(0.55, 0.75), rng.uniform(1.8, 2.2), rng.uniform(2.4, 3.0)
            for ev in self.events:
                if (ev.inst in branches and self.inst_region[ev.inst][:2] == prov
                        and ev.day >= onset and genuine(ev) and rnd() < rate):
                    ev.total = int(ev.total * rng.uniform(lo, hi))
                    ev.fund = self._fund(ev.p, ev.day, "pharmacy", ev.inst, ev.total, ev.filing)
                    ev.tag = "anomaly"
                    flagged.append(ev)
            note = (f"{self.chain_name[chain]} ({chain}): its province-{prov} branches bill "
                    f"{rate:.0%} of their sales at {lo:.1f}-{hi:.1f}x from {self.dstr[onset]}")
        else:
            # A stock of harvested cards, each billed at two provinces' branches within
            # hours, two to four cards a week: little money, an impossible pattern.
            cards = [p for p in (rng.choice(self.by_pool[rng.randrange(len(self.pools))])
                                 for _ in range(40))
                     if p not in self.reserved and p not in self.regulars][:12]
            by_prov = defaultdict(list)
            for b in branches:
                by_prov[self.inst_region[b][:2]].append(b)
            d = onset
            while d < self.days - 1:
                for _ in range(rng.randint(2, 4)):
                    p = rng.choice(cards)
                    p1, p2 = rng.sample(provinces, 2)
                    day = min(self.days - 1, d + rng.randint(0, 6))
                    sec1 = rng.randint(8 * 3600, 14 * 3600)
                    sec2 = sec1 + rng.randint(2 * 3600, 9 * 3600)
                    dx = rng.choice(("I10", "E11.9", "I25.1", "B18.1"))
                    for prov, sec in ((p1, sec1), (p2, sec2)):
                        b = rng.choice(by_prov[prov])
                        flagged.append(self._visit(rng, p, day, "pharmacy", b,
                                                   self._filing_for(p, b), "anomaly", dx=dx,
                                                   cost_mult=rng.uniform(1.0, 2.0), sec=sec))
                d += 7
            note = (f"{self.chain_name[chain]} ({chain}): {len(cards)} harvested cards billed at "
                    f"branches in two provinces within hours, from {self.dstr[onset]}")
        if flagged:
            regions = sorted({self.inst_region[e.inst] for e in flagged})
            self._truth("pharmacy_chain_anomaly", "chain", chain, regions, flagged, note,
                        window_start=onset, expected={"shape": shape,
                                                      "onset": self.dstr[onset]})
        # Look-alike: a one-province chain's claims jump (not a cross-province chain).
        single = by_chain["PCH004"]
        jumped = []
        for ev in self.events:
            if ev.inst in single and ev.day >= onset and genuine(ev) and rnd() < 0.6:
                ev.total = int(ev.total * rng.uniform(2.0, 3.0))
                ev.fund = self._fund(ev.p, ev.day, "pharmacy", ev.inst, ev.total, ev.filing)
                ev.tag = "anomaly"
                jumped.append(ev)
        if jumped:
            self._truth("lookalike", "chain", "PCH004", sorted({self.inst_region[b]
                                                               for b in single}),
                        jumped[:50], "one-province chain whose claims jump: its own "
                        "region's matter, not a cross-province chain", window_start=onset,
                        rule_id="pharmacy_chain_anomaly", injected=False)
        # Look-alike: a traveller buys at the clean chain in two provinces on one day.
        home = by_chain[clean]
        provs = sorted({self.inst_region[b][:2] for b in home})
        d = rng.randint(onset, self.days - 2)
        p = self._free_person(rng, list(range(len(self.pools))), d, d, 18, 80)
        if p is not None and len(provs) >= 2:
            evs = []
            for prov, sec in zip(rng.sample(provs, 2), (9 * 3600, 19 * 3600)):
                b = rng.choice([i for i in home if self.inst_region[i][:2] == prov])
                evs.append(self._visit(rng, p, d, "pharmacy", b, self._filing_for(p, b),
                                       "anomaly", sec=sec))
            self._truth("lookalike", "chain", clean, sorted({self.inst_region[e.inst]
                                                            for e in evs}), evs,
                        "one traveller served at branches in two provinces on one day",
                        window_start=d, rule_id="pharmacy_chain_anomaly", injected=False)

    def _incidental_truth(self) -> None:
        """Readmissions and overlaps the data shows without being planted (background
        care, the surge's and siphon's stays): findings by definition, so listed with
        ``"injected": false``, as the pool findings are."""
        planted = {frozenset(id(e) for e in t["settlement_ids"]) for t in self.truth
                   if t["anomaly"] in ("split_admission", "overlapping_stay", "lookalike")}
        by_person: dict[int, list[_Ev]] = defaultdict(list)
        for ev in self.events:
            if (ev.vt == "inpatient" and ev.adm is not None and not ev.variant
                    and ev.tag in ("bg", "anomaly", "resettle")):
                by_person[ev.p].append(ev)
        for p, evs in sorted(by_person.items()):
            if len(evs) < 2:
                continue
            evs.sort(key=lambda e: (e.adm, e.dis, e.inst))
            for i, a in enumerate(evs):
                for b in evs[i + 1:]:
                    if frozenset((id(a), id(b))) in planted:
                        continue
                    same = a.inst == b.inst
                    if not same and min(a.dis, b.dis) - max(a.adm, b.adm) > 0:
                        kind = "overlapping_stay"
                    elif (same and 0 <= b.adm - a.dis <= 15 and a.dxs[0][:3] == b.dxs[0][:3]
                          and a.dxs[0][:3] not in ("Z49", "Z51")):
                        kind = "split_admission"
                    else:
                        continue
                    self._truth(kind, "person", self.p_id[p],
                                [self.inst_region[a.inst], self.inst_region[b.inst],
                                 self.p_region[p]], [a, b],
                                f"incidental: {self.inst_id[a.inst]} {self.dstr[a.adm]}.."
                                f"{self.dstr[a.dis]} and {self.inst_id[b.inst]} "
                                f"{self.dstr[b.adm]}..{self.dstr[b.dis]}",
                                window_start=a.adm, injected=False)

    # A few background codes contradict the example sex/age table only because the
    # diagnosis tables work in coarse age bands (a 4-year-old's neonatal jaundice); the
    # way a coder would write them for that patient instead. Relabelling after the
    # fact draws nothing, so every other figure of the stream stays as it was.
    RECODED = {("P59.9", "age"): "R17", ("H25.9", "age"): "H26.9",
               ("O80", "age"): "N95.0", ("O82", "age"): "N95.0"}
    # The planted contradictions: the codes a wrong card or an upcoded bill shows.
    MISCODED = [("O80", "M", "a delivery billed on a man's card"),
                ("N40", "F", "a prostate diagnosis on a woman's bill"),
                ("P59.9", None, "neonatal jaundice billed for an adult")]

    def _coding_against_the_knowledge_table(self) -> None:
        """Keep background codes within the shipped example table of diagnosis_restriction
        and plant one settlement of each kind it must catch (truth ``diagnosis_restriction``)."""
        from rules.builtin.diagnosis_restriction import DiagnosisRestriction

        table = DiagnosisRestriction().table_for(None)
        for ev in self.events:
            codes = ev.dxs
            if not codes or not isinstance(codes[0], str):
                continue
            sex, age = self.p_sex[ev.p], self.age(ev.p, ev.day)
            fixed = []
            for code in codes:
                entry = table.lookup(code) if isinstance(code, str) else None
                reason = entry.violation(sex, age) if entry is not None else None
                fixed.append(self.RECODED.get((code, reason), code) if reason else code)
            if tuple(fixed) != tuple(codes):
                ev.dxs = tuple(fixed)
        rng = self.rng("knowledge")
        linked = {id(ev.link) for ev in self.events if ev.link is not None}
        for code, wrong_sex, note in self.MISCODED:
            pool = [ev for ev in self.events
                    if ev.tag == "bg" and ev.link is None and id(ev) not in linked
                    and not ev.variant and ev.vt in ("outpatient", "inpatient")
                    and ev.dxs and isinstance(ev.dxs[0], str)
                    and (self.p_sex[ev.p] == wrong_sex if wrong_sex
                         else self.age(ev.p, ev.day) >= 30)
                    and self.age(ev.p, ev.day) >= 18]
            if not pool:
                continue
            ev = pool[int(rng.random() * len(pool))]
            ev.dxs = (code, *ev.dxs[1:])
            self._truth("diagnosis_restriction", "settlement", ev,
                        [self.inst_region[ev.inst]], [ev],
                        f"{note} ({code}; {self.p_sex[ev.p]}, aged {self.age(ev.p, ev.day)})")

    # ------------------------------------------------------------------ stream noise
    def _reversals(self) -> None:
        """冲正: ~0.3% of settlements reversed 1-5 days later, half of them re-settled."""
        rng = self.rng("reversals")
        rnd = rng.random
        out = []
        for ev in list(self.events):
            # 0.4% drawn: those too late in the period to be reversed inside it drop out
            if ev.tag != "bg" or rnd() >= 0.004:
                continue
            d = ev.day + rng.randint(1, 5)
            p = ev.p
            if d >= self.days or self.in_stay(p, d):
                continue
            sec = self._hour(rnd, "inpatient")
            items = None if ev.items is None else [
                (c, -a, None if q is None else -q) for c, a, q in ev.items]
            rev = ev.clone(day=d, sec=sec, tag="reversal", total=-ev.total, fund=-ev.fund,
                           qty=-ev.qty, items=items)
            rev.link = ev  # "reverses" names it once ids are assigned
            ev.variant = "reversed"  # keeps it out of the malformed picks
            out.append(rev)
            if ev.vt in ("outpatient", "pharmacy") and rnd() < 0.5:
                # Re-settled at the corrected amount a few minutes later.
                self._visit(rng, p, d, ev.vt, ev.inst, ev.filing, "resettle",
                            dx=ev.dxs[0] if ev.dxs else None,
                            sec=min(86399, sec + rng.randint(60, 900)))
        self.events.extend(out)

    def _malformed(self) -> None:
        """Hand-keyed and transport errors (~0.5%), mostly from county institutions."""
        rng = self.rng("malformed")
        rnd = rng.random
        manual_inst = self.inst_manual
        cands = [e for e in self.events if e.tag == "bg" and not e.variant]
        manual = [e for e in cands if manual_inst[e.inst]]
        inpatient = [e for e in cands if e.vt == "inpatient"]
        inpatient = [e for e in inpatient if manual_inst[e.inst]] or inpatient
        kinds = [k for k, _w, _ip in MALFORMED_KINDS]
        needs_ip = {k for k, _w, ip in MALFORMED_KINDS if ip}
        n = max(len(kinds), round(0.005 * len(cands)))
        plan = kinds + rng.choices(kinds, [w for _k, w, _ip in MALFORMED_KINDS],
                                   k=n - len(kinds))
        for reason in plan:
            for _ in range(1000):
                if reason in needs_ip:
                    pool = [e for e in inpatient if e.tag == "bg"] or [
                        e for e in cands if e.vt == "inpatient" and e.tag == "bg"]
                else:
                    pool = manual if manual and rnd() < 0.75 else cands
                if not pool:
                    break
                ev = rng.choice(pool)
                if ev.tag != "bg" or (reason == "negative_amount" and ev.total == ev.fund):
                    continue
                ev.tag = "malformed"
                ev.variant = f"{reason}:{self._variant(rng, reason, ev.total - ev.fund)}"
                break

    @staticmethod
    def _variant(rng: random.Random, reason: str, personal: int) -> str:
        """How a record goes wrong, within its reason (the truth's ``note``)."""
        if reason == "not_json":
            return rng.choice(("truncated", "truncated", "python_repr", "csv"))
        if reason == "amounts_do_not_add_up":
            return rng.choice(("typo",) + (("times_ten",) if personal else ())
                              + (("dropped_fen",) if personal % 100 else ()))
        if reason == "inpatient_without_dates":
            return rng.choice(("both_missing", "discharge_missing"))
        if reason == "invalid_region":
            return rng.choice(INVALID_REGIONS)
        if reason == "datetime_without_offset":
            return "space_separated" if rng.random() < 0.3 else "no_offset"
        if reason == "invalid_diagnosis":
            return rng.choice(("no_dot", "free_text", "double_dot", "digit_first"))
        return reason

    def _duplicates(self) -> None:
        """Re-sent settlements: ~0.3% exact copies, a few conflicting ones."""
        rng = self.rng("duplicates")
        rnd = rng.random
        cands = [e for e in self.events if e.tag in ("bg", "anomaly")]
        out = []
        for ev in cands:
            if rnd() >= 0.003:
                continue
            dup = ev.clone(tag="duplicate", variant="exact" if rnd() < 0.6 else "reserialised")
            dup.emit += rng.randint(20, 4 * 3600)  # re-sent after a timeout
            dup.link = ev
            out.append(dup)
        plain = [e for e in cands if e.tag == "bg" and e.vt == "outpatient" and not e.opi]
        for ev in rng.sample(plain, min(3 + self.days // 10, len(plain))):
            delta = rng.choice((1000, 2000, 5000, -500 if ev.total - ev.fund > 600 else 800))
            dup = ev.clone(tag="conflicting_duplicate", total=ev.total + delta)  # re-keyed
            dup.emit += rng.randint(600, 20 * 3600)
            dup.link = ev
            out.append(dup)
        self.events.extend(out)

    # ------------------------------------------------------------------ money flows
    def _money_flows(self) -> dict:
        """Contributions sized to each pool's simulated spending; the registry.

        Each pool budgets its income as a multiple of its spending in the stream (all
        of it: anomalies are paid for too), so that only the injected pool runs a
        deficit; its budget covers 70% of its spending. Every calendar month's
        remittances add up to the month's budget, however many of them the period holds.
        """
        rng = self.rng("contributions")
        days = self.days
        spent = [0] * len(self.pools)
        for ev in self.events:
            if ev.tag in ("bg", "anomaly", "reversal", "resettle"):
                spent[ev.pool] += ev.fund
        monthly = [max(100000, int(x / days * 30.44)) for x in spent]  # fen, expected
        planted = {("441500", "resident"): 1.6,  # and in deficit: critical (< 3 months)
                   ("445200", "resident"): 4.2,  # warning band (3-6 months)
                   ("440100", "employee"): 18.0}  # the capital's idle surplus (> 12 months)
        self.deficit_pool = self.pool_index[("441500", "resident")]
        self.thin_pools = [self.pool_index[k] for k, months in planted.items() if months < 6]
        factor = []
        pools_out = []
        for i, (region, ins) in enumerate(self.pools):
            # Employee pools save faster (income ~1.45× spending): they start lower so
            # that only the planted one is in surplus within a few months.
            months = planted.get((region, ins)) or (rng.uniform(6.5, 9.5) if ins == "employee"
                                                  else rng.uniform(7, 10))
            # Margins above spending absorb a month's noise and the share paid up to
            # the adjustment fund (3-8%).
            factor.append(0.70 if i == self.deficit_pool else
                          rng.uniform(1.35, 1.55) if ins == "employee" else
                          rng.uniform(1.30, 1.40))
            opening = monthly[i] * months
            mag = 10 ** max(2, int(math.log10(max(opening, 1))) - 3)  # 4 significant digits
            row = {"region": region, "name": CITY_NAME[region], "insurance_type": ins,
                   "opening_balance": _yuan(int(round(opening / mag) * mag))}
            if PROVINCES[region[:2]]["capital"] == region:
                row["capital"] = True
            pools_out.append(row)
        self.opening = [int(row["opening_balance"].replace(".", "")) for row in pools_out]
        # The tax bureau remits contributions every workday; the resident fiscal subsidy
        # comes on Wednesdays; adjustment-fund flows on the 25th. Counted over the whole
        # calendar month, so a month's remittances add up to its budget.
        workdays: dict[tuple[int, int], int] = {}
        wednesdays: dict[tuple[int, int], int] = {}
        for d in range(days):
            dt = self.dates[d]
            ym = (dt.year, dt.month)
            if ym not in workdays:
                dim = calendar.monthrange(*ym)[1]
                month = [date(dt.year, dt.month, k) for k in range(1, dim + 1)]
                workdays[ym] = sum(1 for x in month
                                   if not self._is_rest(x.toordinal() - self.ord0))
                wednesdays[ym] = sum(1 for x in month if x.weekday() == 2)
        for d in range(days):
            dt = self.dates[d]
            ym = (dt.year, dt.month)
            workday = self.kind[d] != 2
            for i, (region, ins) in enumerate(self.pools):
                income = monthly[i] * factor[i]
                flows = []
                if workday:
                    day_share = income / workdays[ym]
                    if ins == "employee":
                        flows += [("employer", day_share * 0.75), ("individual", day_share * 0.25)]
                    else:
                        flows.append(("individual", day_share * 0.35))
                if dt.weekday() == 2 and ins == "resident":
                    flows.append(("fiscal_subsidy", income * 0.65 / wednesdays[ym]))
                if dt.day == 25:
                    ratio = PROVINCES[region[:2]]["adjustment_ratio"][ins]
                    flows.append(("adjustment_out", -income * ratio))
                    if i == self.deficit_pool:  # the provincial fund tops up part of the gap
                        flows.append(("adjustment_in",
                                      (monthly[i] - income * (1 - ratio)) * 0.3))
                for source, amount in flows:
                    if source in ("adjustment_out", "adjustment_in"):
                        fen = int(amount)
                    else:
                        fen = int(amount * (1 + 0.03 * rng.gauss()))
                    sec = self._hour(rng.random, "contribution")
                    if source == "adjustment_in":
                        sec = min(86399, sec + 3600)
                    self.contribs.append(_Contrib(i, d, sec, source, fen))
        chains = [{"id": cid, "name": name, "type": "pharmacy_chain", "regions": sorted(br)}
                  for cid, name, br in PHARMACY_CHAINS]
        chains.append({"id": HOSPITAL_GROUP[0], "name": HOSPITAL_GROUP[1],
                       "type": "hospital_group",
                       "regions": sorted({m[1:7] for m in HOSPITAL_GROUP[2]})})
        return {"schema": "pools/v1",
                "provinces": {k: dict(v) for k, v in PROVINCES.items()},
                "pools": pools_out, "institutions": list(self.inst_rows), "chains": chains}

    # ------------------------------------------------------------------ output
    def _assign_ids(self) -> None:
        """Sequence numbers per institution and day, in settled-time order."""
        own = [e for e in self.events if e.tag not in ("duplicate", "conflicting_duplicate")]
        lo = self.lo
        # A stable sort: events settled in the same second keep their creation order.
        own.sort(key=lambda e: (e.inst * 1000 + e.day - lo) * 86400 + e.sec)
        prev, k = -1, 0
        for ev in own:
            key = ev.inst * 1000 + ev.day
            k = k + 1 if key == prev else 1
            prev = key
            ev.k = k
        for ev in self.events:
            if ev.tag in ("duplicate", "conflicting_duplicate"):
                ev.k = ev.link.k

    def _record(self, ev: _Ev, st: bool | None = None) -> dict:
        """The settlement/v1 record of an event (amounts in the institution's style)."""
        if self._recorder is None:
            self._recorder = self._make_recorder()
        return self._recorder(ev, st)

    def _make_recorder(self):
        """``_record`` as a closure: every table a local, as it runs once per line."""
        p_tup, i_tup, ymd, day_t, dstr = self.p_tup, self.i_tup, self.ymd, self.dayT, self.dstr
        ord0, sid, tod8, cents, seq = self.ord0, self.sid, _TOD8, _CENTS, _SEQ

        def record(ev: _Ev, st: bool | None = None) -> dict:
            pid, sex, ins, home, _pool, birth = p_tup[ev.p]
            iid, itype, ilevel, chain, treat, style = i_tup[ev.inst]
            if st is None:
                st = style
            d, total, fund, k = ev.day, ev.total, ev.fund, ev.k
            rec: dict[str, Any] = {
                "schema": "settlement/v1",
                "settlement_id": iid + ymd[d] + (seq[k] if k < 10000 else str(k)),
                "settled_at": day_t[d] + tod8[ev.sec], "person_id": pid, "sex": sex,
                "age": (ord0 + d - birth) * 10000 // 3652425, "insurance_type": ins,
                "insured_region": home, "treatment_region": treat, "institution_id": iid,
                "institution_type": itype, "institution_level": ilevel, "chain_id": chain,
                "visit_type": ev.vt}
            if ev.adm is not None:
                rec["admitted_on"] = dstr[ev.adm]
                rec["discharged_on"] = dstr[ev.dis]
            rec["diagnoses"] = ev.dxs
            personal = total - fund
            if not st:
                rec["total_cost"] = total / 100
                rec["fund_paid"] = fund / 100
                rec["personal_paid"] = personal / 100
            elif total >= 0:  # then 0 <= fund <= total
                rec["total_cost"] = f"{total // 100}.{cents[total % 100]}"
                rec["fund_paid"] = f"{fund // 100}.{cents[fund % 100]}"
                rec["personal_paid"] = f"{personal // 100}.{cents[personal % 100]}"
            else:
                rec["total_cost"] = _money(total, True)
                rec["fund_paid"] = _money(fund, True)
                rec["personal_paid"] = _money(personal, True)
            if ev.items is not None:
                rec["items"] = [{"category": c, "amount": _money(a, st)} if q is None else
                                {"category": c, "amount": _money(a, st), "quantity": q}
                                for c, a, q in ev.items]
            elif ev.qty:
                rec["items"] = [{"category": "drug", "amount": rec["total_cost"],
                                 "quantity": ev.qty}]
            elif ev.opi:
                sign, a = (-1, -total) if total < 0 else (1, total)
                drug = a * 55 // 100 if ev.opi == 1 else a
                exam = (a - drug) * 2 // 3
                rec["items"] = [{"category": c, "amount": _money(sign * x, st)}
                                for c, x in (("drug", drug), ("exam", exam),
                                             ("treatment", a - drug - exam)) if x]
            rec["filing"] = ev.filing
            rec["reverses"] = (None if ev.link is None or ev.tag != "reversal"
                               else sid(ev.link))
            return rec

        return record

    def _corrupt(self, rng: random.Random, ev: _Ev) -> bytes:
        """The bytes of a malformed record: one fault each, as recorded in the truth."""
        reason, variant = ev.variant.split(":", 1)
        r = self._record(ev)
        st = self.inst_style[ev.inst]
        personal = ev.total - ev.fund
        if reason == "not_json":
            raw = orjson.dumps(r)
            if variant == "truncated":
                return raw[: rng.randint(20, len(raw) - 20)]
            if variant == "python_repr":
                return repr(r).encode()  # a Python dict: single quotes, None
            return ",".join((r["settlement_id"], r["settled_at"], r["person_id"],
                             r["institution_id"], _yuan(ev.total))).encode()
        if reason == "amounts_do_not_add_up":
            if variant == "times_ten":
                personal *= 10
            elif variant == "dropped_fen":
                personal -= personal % 100
            else:
                personal += rng.choice((100, 1000, 900, -100 if personal > 100 else 200))
            r["personal_paid"] = _money(personal, st)
        elif reason == "discharge_before_admission":
            if r["admitted_on"] == r["discharged_on"]:
                r["admitted_on"] = self.dstr[ev.day + 1]
            else:
                r["admitted_on"], r["discharged_on"] = r["discharged_on"], r["admitted_on"]
        elif reason == "inpatient_without_dates":
            del r["discharged_on"]
            if variant == "both_missing":
                del r["admitted_on"]
        elif reason == "invalid_region":
            r["insured_region"] = variant
        elif reason == "datetime_without_offset":
            s = r["settled_at"][:-6]
            r["settled_at"] = s.replace("T", " ") if variant == "space_separated" else s
        elif reason == "negative_amount":
            # A stray minus keyed into the personal share; the sum still balances.
            r["personal_paid"] = _money(-personal, st)
            r["fund_paid"] = _money(ev.total + personal, st)
        elif reason == "invalid_diagnosis":
            code = r["diagnoses"][0] if r["diagnoses"] else "I10"
            bad = {"no_dot": code.replace(".", "") + ("" if "." in code else "9"),
                   "free_text": "高血压" if code == "I10" else "待查",
                   "double_dot": code.replace(".", "..") if "." in code else code + "..1",
                   "digit_first": "1" + code[1:]}[variant]
            r["diagnoses"] = [bad, *r["diagnoses"][1:]]
        return orjson.dumps(r)

    def _contribution(self, c: _Contrib) -> dict:
        region, ins = self.pools[c.pool]
        return {"schema": "contribution/v1",
                "contribution_id": f"{region}-{ins[0].upper()}-{c.source}-{self.ymd[c.day]}",
                "received_at": self.dayT[c.day] + _TOD8[c.sec],
                "pool_region": region, "insurance_type": ins,
                "amount": _money(c.amount, c.pool % 2 == 0), "source": c.source}

    def _serialise(self) -> list[bytes]:
        rng = self.rng("emit")
        rnd = rng.random
        # Emission order: event time plus transport lag; Guangxi's platform syncs late
        # (DESIGN.md: up to 4 hours in the 2024 national stress test).
        guangxi = [r[:2] == "45" for r in self.inst_region]
        for ev in self.events:
            if ev.link is None or ev.tag == "reversal":
                ev.emit += int(rnd() * 5)  # network jitter
                if guangxi[ev.inst] and rnd() < 0.4:
                    ev.emit += int(rnd() * 4 * 3600)
        for ev in self.events:
            if ev.link is not None and ev.tag != "reversal":
                ev.emit = max(ev.emit, ev.link.emit + 1)  # a re-send follows its original
        allev: list[Any] = self.events + self.contribs
        for n, ev in enumerate(allev):
            ev.seq = ev.emit * 1048576 + n  # unique: ties keep creation order
        allev.sort(key=operator.attrgetter("seq"))
        # Lines go through a small reused buffer, split every 512 lines: keeping 10^5
        # separately allocated dumps results alive (or one huge buffer and its copy)
        # costs more than the serialisation itself, as fresh memory is slow to touch.
        lines: list[bytes] = []
        buf = bytearray()
        dumps, record = orjson.dumps, self._make_recorder()
        for line_no, ev in enumerate(allev, 1):
            if not line_no & 511:
                part = bytes(buf).split(b"\n")
                part.pop()  # the empty tail after the last newline
                lines += part
                buf.clear()
            ev.line = line_no
            tag = ev.tag
            if tag == "bg" or tag == "anomaly":
                buf += dumps(record(ev))
            elif tag == "contribution":
                buf += dumps(self._contribution(ev))
            elif tag == "duplicate":
                orig = ev.link
                if ev.variant == "exact":
                    buf += dumps(record(orig))
                    how = "exact bytes re-sent"
                else:
                    buf += dumps(record(orig, not self.inst_style[orig.inst]),
                                 option=orjson.OPT_SORT_KEYS)
                    how = "same content re-serialised (keys sorted, amounts in the other form)"
                self.truth.append({
                    "anomaly": "duplicate", "subject": {"kind": "settlement", "id": orig},
                    "settlement_ids": [orig], "line": line_no, "original_line": orig.line,
                    "note": how})
            elif tag == "conflicting_duplicate":
                orig = ev.link
                buf += dumps(record(ev))
                self.truth.append({
                    "anomaly": "conflicting_duplicate",
                    "subject": {"kind": "settlement", "id": orig}, "settlement_ids": [orig],
                    "line": line_no, "original_line": orig.line,
                    "note": f"same settlement_id re-sent with total_cost {_yuan(orig.total)} "
                            f"-> {_yuan(ev.total)}"})
            elif tag == "malformed":
                buf += self._corrupt(rng, ev)
                reason, variant = ev.variant.split(":", 1)
                self.truth.append({"anomaly": "malformed", "expected_reason": reason,
                                   "line": line_no, "note": variant,
                                   "settlement_id": self.sid(ev),
                                   "institution_id": self.inst_id[ev.inst]})
            else:  # reversal, resettle
                buf += dumps(record(ev))
            buf += b"\n"
        part = bytes(buf).split(b"\n")
        part.pop()
        lines += part
        assert len(lines) == len(allev)
        return lines

    def _overspend_truth(self) -> None:
        """The overspending pool, once per calendar month of the stream: its inpatient
        stays, dearest first, are what an auditor pulls."""
        region, ins = OVERSPEND_POOL
        by_month: dict[str, list[_Ev]] = defaultdict(list)
        for ev in self.events:
            if ev.pool == self.overspend_pool and ev.vt == "inpatient" and ev.tag == "bg":
                by_month[self.month[ev.day]].append(ev)
        for m, evs in sorted(by_month.items()):
            window = month_window(m)
            self.truth.append({
                "anomaly": "management_overspend", "subject": {"kind": "pool",
                                                                "id": f"{region}:{ins}"},
                "regions": [region], "window": window,
                "settlement_ids": sorted(evs, key=lambda e: (-e.fund, e.day, e.sec))[:10],
                "note": f"{CITY_NAME[region]} {ins} pool: its own hospitals bill "
                        f"{OVERSPEND_FACTOR:.2f}× for the same case mix (管理风险)",
                "injected": True})

    def _pool_truth(self) -> None:
        """Pool findings as the contract's monthly balances show them (exact, in fen).

        Every pool is checked, not only the injected ones: an entry with
        ``"injected": false`` is a finding the data shows without being planted (a
        short partial month, say), so an evaluation can tell the two apart.
        """
        month = self.month
        months = sorted({month[d] for d in range(self.days)})
        m_index = {d: months.index(month[d]) for d in range(self.days)}
        inc = [[0] * len(months) for _ in self.pools]
        exp = [[0] * len(months) for _ in self.pools]
        for c in self.contribs:
            inc[c.pool][m_index[c.day]] += c.amount
        counted = {"bg", "anomaly", "reversal", "resettle"}
        for ev in self.events:
            if ev.tag in counted:
                exp[ev.pool][m_index[ev.day]] += ev.fund

        def top(pool: int, m: str) -> list[_Ev]:  # the settlements an auditor pulls first
            evs = [e for e in self.events if e.pool == pool and e.tag in counted
                   and month[e.day] == m]
            return sorted(evs, key=lambda ev: (-ev.fund, ev.day, ev.sec))[:10]
        last_day = self.dates[self.days - 1]
        planted = {self.deficit_pool: ("pool_deficit", "pool_balance_low")}
        for p in self.thin_pools:
            planted.setdefault(p, ("pool_balance_low",))
        for pool, (region, ins) in enumerate(self.pools):
            balance = self.opening[pool]
            history: list[int] = []
            for k, m in enumerate(months):
                i, e = inc[pool][k], exp[pool][k]
                balance += i - e
                history.append(e)
                recent = history[-12:]
                mop = round(balance / (sum(recent) / len(recent)), 2) if sum(recent) > 0 else None
                y, mo = int(m[:4]), int(m[5:])
                dim = calendar.monthrange(y, mo)[1]
                first, last = max(date(y, mo, 1), self.start), min(date(y, mo, dim), last_day)
                partial = first.day != 1 or last.day != dim
                window = {"start": f"{first.isoformat()}T00:00:00+08:00",
                          "end": f"{last.isoformat()}T23:59:59+08:00"}
                evidence = {"month": m, "income": _yuan(i), "expenditure": _yuan(e),
                            "balance_end": _yuan(balance), "months_of_payment": mop,
                            "opening_balance": _yuan(self.opening[pool]),
                            "partial_month": partial}
                subject = {"kind": "pool", "id": f"{region}:{ins}"}
                name = f"{CITY_NAME[region]} {ins} pool"
                if e > i:
                    injected = "pool_deficit" in planted.get(pool, ())
                    self.truth.append({
                        "anomaly": "pool_deficit", "subject": subject, "regions": [region],
                        "window": window, "settlement_ids": top(pool, m),
                        "note": (f"{name}: expenditure above income in {m} (收不抵支); its "
                                 "income is set to ~70% of its spending" if injected else
                                 f"{name}: incidental deficit in {m}"
                                 + (" (a partial month)" if partial else "")),
                        "injected": injected, "expected": evidence})
                if mop is not None and mop < 6:
                    band = "critical" if mop < 3 else "warning"
                    injected = "pool_balance_low" in planted.get(pool, ())
                    self.truth.append({
                        "anomaly": "pool_balance_low", "subject": subject, "regions": [region],
                        "window": window, "settlement_ids": top(pool, m),
                        "note": f"{name}: the balance covers {mop} months of payment at the "
                                f"end of {m} ({band})" + ("" if injected else ", incidental"),
                        "injected": injected, "expected": dict(evidence, band=band)})
