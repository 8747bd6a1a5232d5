"""cross_province_surge — an institution's cross-province settlement cost jumps (双地联查).

Cross-region fraud falls between regions: supervision is local, so neither side
sees the whole. The sources' remedy: when an institution's **cross-province
settlement cost rises by more than 20%**, open a **joint review in both
regions** — the treatment side inspects the care on site, the insured side checks
that the patients' enrolment and filings are genuine.

How it is measured (event time, Asia/Shanghai calendar days):

* Per institution, daily buckets of its cross-province settlements (insured and
  treatment provinces differ): count, ``total_cost`` and ``fund_paid`` (both kept;
  the parameter ``measure`` picks which one is judged, default ``total_cost``:
  it is what the bill says was done, independent of each province's reimbursement
  rates and of the filing discount), split by insured region; for the most recent
  days also the settlement ids and persons.
* **Evaluation** happens when a day closes: when the stream's watermark (event
  time minus the allowed lateness, ``streams.watermark``) passes midnight, the
  drivers call ``close``, and the 7-day window ending with each newly closed day
  is judged once, oldest first. Judging closed days only keeps a half-filled day
  from being compared with full ones, and makes the verdict independent of the
  order in which a live worker's partitions delivered the records. A settlement
  that arrives after its day was judged (later than the allowed lateness) still
  counts in the windows judged later.
* **Baseline** = mean of the 4 non-overlapping 7-day windows just before the
  current one. **Surge** when ``current > baseline × (1 + threshold)`` (exactly at
  the threshold is no surge); ``ratio = current / baseline``, ``growth = ratio -
  1``; ``growth > critical_threshold`` makes it critical.
* **Noise guards** (each per province overridable): at least
  ``min_current_settlements`` in the current window, a baseline of at least
  ``min_baseline_settlements`` settlements and ``min_baseline_yuan`` yuan *per
  window on average*, and ``min_history_days`` days since the institution's first
  settlement seen by the rule (so an institution new to the stream is not judged
  against empty weeks). Inpatient bills are heavy-tailed — one 40,000-yuan stay can
  double an institution's cross-province week — so the increase must also stand out
  from the baseline's own spread: ``current - baseline >= min_z`` standard
  deviations of the 4 baseline windows (default 3; 0 turns it off). On the
  simulator (``bench/surge_quality.py``) it halves the alerts raised on noise, at
  the price of a later first alert; four windows estimate the spread roughly, so
  an institution with a few very costly stays can still fire on noise.
* **Alert identity.** A surge that persists must not raise a new alert every day.
  The first day D a surge is found opens an *episode*; every surge found on the
  window ending D .. D+6 belongs to it and keeps its ``alert_id``. The alert's
  ``window`` is the span those windows cover: D-6 00:00 to D+7 00:00. Within an
  episode the alert is re-emitted (same id) only when the surge is larger than the
  last emitted one (a higher ratio, possibly a higher severity); it never gets
  weaker. A surge still there after D+6 opens a new episode: one reminder a week.
* **Reversals** (冲正): when the original is among the recent settlements the rule
  still holds ids for (the last 14 days), it is taken out of its own day; an older
  original is subtracted on the reversal's day (a negative settlement), which can
  only lower a later current window.
* **Regions**: the treatment region first, then the insured regions that account
  for the increase — the smallest set (largest increases first) covering at least
  ``region_coverage`` of the summed increases of the regions that grew, at most
  ``max_insured_regions``. Per-province overrides use the institution's
  (treatment) province.

State is bounded: day aggregates for the 35 days the next window and its baseline
cover, ids and persons for the last 14 days (the current window, and how far back
a reversal's original is looked for). A day's ids are kept in buckets
(``rules.detail``): a settlement costs about the same at a hospital treating
thousands from other provinces a day as at a small one.

>>> from datetime import datetime, timedelta
>>> from types import SimpleNamespace as E
>>> rule = CrossProvinceSurge(min_current_settlements=1, min_baseline_settlements=1,
...                           min_baseline_yuan=100)
>>> def bill(day, yuan, n=1):
...     t = datetime(2025, 3, 3, 10, tzinfo=SHANGHAI) + timedelta(days=day)
...     return E(kind="settlement", settlement_id=f"S{day}-{n}", settled_at=t,
...              institution_id="H440900001", person_id=f"P{n}", insured_region="450100",
...              treatment_region="440900", is_cross_province=True, reverses=None,
...              total_cost_fen=yuan * 100, fund_paid_fen=yuan * 70)
>>> state, ids = None, []
>>> for day in range(42):   # five weeks at 1000 yuan a day, then a week at 1400
...     state, _ = rule.apply(state, bill(day, 1400 if day >= 35 else 1000))
...     midnight = bill(day + 1, 0).settled_at.replace(hour=0)   # the day is over
...     state, fired = rule.close(state, midnight)
...     ids += [a["alert_id"] for a in fired]
>>> len(ids), len(set(ids))      # re-emitted as the surge grew, under one alert id
(4, 1)
>>> a = fired[0]                 # day 41 closed: a full week at 1400
>>> a["severity"], a["review"], a["regions"], a["evidence"]["ratio"]
('warning', 'joint', ['440900', '450100'], 1.4)
>>> a["window"]["start"][:10], a["evidence"]["first_detected"]
('2025-04-04', '2025-04-10')
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from fractions import Fraction

from rules import detail
from rules.alerts import SHANGHAI, day_start, days_window, iso, make_alert, shanghai_day  # noqa: F401 (the examples)
from rules.core import Param, Rule, RuleConfigError
from streams.records import fen_to_yuan_str

WINDOW_DAYS = 7
BASELINE_WINDOWS = 4
# Day aggregates kept behind the last judged day: the next window and its baseline.
KEPT_BEHIND = WINDOW_DAYS * (1 + BASELINE_WINDOWS)  # 35
DETAIL_DAYS = 2 * WINDOW_DAYS  # ids and persons: the current window, and reversals' reach
TOP_PERSONS = 10
TOP_SETTLEMENTS = 50  # the alert lists the most expensive ones (evidence has the count)
MEASURES = {"total_cost": 0, "fund_paid": 1}
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class CrossProvinceSurge(Rule):
    rule_id = "cross_province_surge"
    description = ("An institution's cross-province settlement cost over 7 days rises more "
                   "than a threshold above its 4-week baseline → joint review in both regions "
                   "(双地联查)")
    subject_kind = "institution"
    key_kind = "institution"
    params = {
        "measure": Param(str, "total_cost", "the amount judged: 'total_cost' (医疗总费用) or "
                         "'fund_paid' (统筹基金支付)"),
        "threshold": Param(float, 0.20, "relative growth over the baseline above which the "
                           "cost surges (0.20 = current > 1.2 × baseline)", minimum=0.0),
        "critical_threshold": Param(float, 0.50, "relative growth above which the alert is "
                                    "critical", minimum=0.0),
        "min_baseline_settlements": Param(int, 10, "cross-province settlements per baseline "
                                          "window (mean of the 4) needed to judge", minimum=1),
        "min_current_settlements": Param(int, 10, "cross-province settlements in the current "
                                         "7 days needed to judge", minimum=1),
        "min_baseline_yuan": Param(int, 20000, "baseline cost per 7-day window (mean of the "
                                   "4, in yuan) needed to judge", minimum=0),
        "min_history_days": Param(int, 35, "days since the institution's first settlement "
                                  "before it is judged (35 = the current and 4 baseline "
                                  "windows)", minimum=35),
        "min_z": Param(float, 3.0, "the increase must also stand out from the baseline's "
                       "own week-to-week spread: (current - baseline) >= min_z × standard "
                       "deviation of the 4 baseline windows (0 = off)", minimum=0.0),
        "max_insured_regions": Param(int, 5, "insured regions named in the joint review at "
                                     "most", minimum=1),
        "region_coverage": Param(float, 0.80, "share of the increase the named insured "
                                 "regions must account for", minimum=0.0, maximum=1.0),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for values in (self.p, *self._by_province.values()):
            if values["measure"] not in MEASURES:
                raise RuleConfigError(f"rules.{self.rule_id}.measure: {values['measure']!r} "
                                      f"is not one of {', '.join(MEASURES)}")

    # ------------------------------------------------------------------ state
    def apply(self, state, event):
        """Add a settlement up; judging waits for the day to close (``close``)."""
        if getattr(event, "kind", None) != "settlement":
            return state, []
        st = state or {}
        day = shanghai_day(event.settled_at)
        done = date.fromisoformat(st["done"]) if "done" in st else None
        if done is not None and day < done - timedelta(days=KEPT_BEHIND - 2):
            return state, []  # too late to count in any window still to be judged
        first = min(date.fromisoformat(st["first"]), day) if st else day
        moved = not st or first.isoformat() != st["first"]
        if not moved and not event.is_cross_province:
            return state, []  # the hot path: a local settlement of a known institution
        st = _in_buckets(st)
        new = {**st, "inst": event.institution_id,
               "region": st.get("region", event.treatment_region), "first": first.isoformat()}
        days = dict(st.get("days", {}))
        details = dict(st.get("det", {}))
        counted = event.is_cross_province and self._count(days, details, day, event)
        if not moved and not counted:
            return state, []  # a re-delivered settlement
        new["days"], new["det"] = days, details
        return new, []

    def close(self, state, midnight):
        """Judge the 7-day window ending on each day before ``midnight`` not judged yet."""
        if not state or "first" not in state:
            return state, []
        last = midnight.date() - timedelta(days=1)
        done = date.fromisoformat(state["done"]) if "done" in state else None
        if (done or date.fromisoformat(state["first"]) - timedelta(days=1)) >= last:
            return state, []
        new = dict(_in_buckets(state))
        days, details = new.get("days", {}), new.get("det", {})
        alerts: dict[str, dict] = {}
        end = done + timedelta(days=1) if done else date.fromisoformat(new["first"])
        while end <= last:
            found = self._judge(new, days, details, end)
            if found:
                alert = self._episode(new, found)
                if alert:
                    alerts[alert["alert_id"]] = alert
            end += timedelta(days=1)
        new["done"] = last.isoformat()
        # What the next windows (from ``last`` + 1 on) and reversals can still need.
        horizon = (last - timedelta(days=KEPT_BEHIND - 2)).isoformat()
        new["days"] = {d: v for d, v in days.items() if d >= horizon}
        horizon = (last - timedelta(days=DETAIL_DAYS - 2)).isoformat()
        new["det"] = {d: v for d, v in details.items() if d >= horizon}
        return new, list(alerts.values())

    def _count(self, days: dict, details: dict, day: date, event) -> bool:
        """Add one cross-province settlement (or reversal) to its day; False if it was
        already counted. Replaces, never mutates, the nested values of the old state."""
        sid = event.settlement_id
        key = day.isoformat()
        if detail.held(details, sid):
            return False  # re-delivered: already counted
        row = [event.total_cost_fen, event.fund_paid_fen, event.person_id,
               event.insured_region]
        if event.reverses:
            original = event.reverses
            # Only the reversal's own last 14 days are searched: what is kept beyond
            # them depends on how far the watermark has got, which differs between
            # a live worker and a replay.
            oldest = (day - timedelta(days=DETAIL_DAYS - 1)).isoformat()
            for dkey, entry in details.items():
                if dkey < oldest or dkey > key:
                    continue
                if original in entry["x"]:
                    return False  # this reversal was already applied
                held = detail.get(entry["ids"], original)
                if held is not None:
                    t, f, _, region = held
                    details[dkey] = {"ids": detail.put(entry["ids"], original, None),
                                     "x": [*entry["x"], original]}
                    days[dkey] = _add(days.get(dkey), region, -1, -t, -f)
                    return True
            # The original is older than that: a negative settlement on the reversal's day.
            days[key] = _add(days.get(key), event.insured_region, -1, event.total_cost_fen,
                             event.fund_paid_fen)
        else:
            days[key] = _add(days.get(key), event.insured_region, 1, event.total_cost_fen,
                             event.fund_paid_fen)
        entry = details.get(key, {"ids": {}, "x": []})
        details[key] = {"ids": detail.put(entry["ids"], sid, row), "x": entry["x"]}
        return True

    # ------------------------------------------------------------------ judging
    def _judge(self, st: dict, days: dict, details: dict, end: date) -> dict | None:
        """The surge found in the 7-day window ending ``end``, or None."""
        province = st["region"][:2]

        def p(name):
            return self.param(name, province)

        first = date.fromisoformat(st["first"])
        if (end - first).days + 1 < p("min_history_days"):
            return None
        m = MEASURES[p("measure")]

        def window(last: date):
            n = amount = 0
            regions: dict[str, list[int]] = {}
            for i in range(WINDOW_DAYS):
                bucket = days.get((last - timedelta(days=i)).isoformat())
                if bucket:
                    n += bucket["n"]
                    amount += bucket["a"][m]
                    for region, (rn, *ra) in bucket["r"].items():
                        acc = regions.setdefault(region, [0, 0])
                        acc[0] += rn
                        acc[1] += ra[m]
            return n, amount, regions

        cur_n, cur, cur_regions = window(end)
        if cur_n < p("min_current_settlements"):
            return None
        base_windows = [(end - timedelta(days=WINDOW_DAYS * k), window(
            end - timedelta(days=WINDOW_DAYS * k))) for k in range(1, BASELINE_WINDOWS + 1)]
        base_n = sum(w[1][0] for w in base_windows)
        base_sum = sum(w[1][1] for w in base_windows)
        if (base_n < BASELINE_WINDOWS * p("min_baseline_settlements")
                or base_sum < BASELINE_WINDOWS * p("min_baseline_yuan") * 100 or base_sum <= 0):
            return None
        ratio = Fraction(cur * BASELINE_WINDOWS, base_sum)
        growth = ratio - 1
        threshold = Fraction(str(p("threshold")))
        if growth <= threshold:
            return None
        # Heavy-tailed bills: one costly stay can double a week. The increase must
        # also exceed min_z standard deviations of the baseline windows (exact: both
        # sides squared, in fen² × 16).
        amounts = [w[1][1] for w in base_windows]
        spread = sum((a * BASELINE_WINDOWS - base_sum) ** 2 for a in amounts)  # 16·n·var
        excess = cur * BASELINE_WINDOWS - base_sum  # 4 × (current - mean)
        min_z = Fraction(str(p("min_z")))
        if excess ** 2 * BASELINE_WINDOWS < min_z ** 2 * spread:
            return None
        z = (float(excess) / (spread / BASELINE_WINDOWS) ** 0.5) if spread else None
        critical = Fraction(str(p("critical_threshold")))
        base_regions: dict[str, list[int]] = {}
        for _, (_, _, regions) in base_windows:
            for region, (rn, ra) in regions.items():
                acc = base_regions.setdefault(region, [0, 0])
                acc[0] += rn
                acc[1] += ra
        return {"end": end, "cur": cur, "cur_n": cur_n, "base_sum": base_sum,
                "base_n": base_n, "ratio": ratio, "growth": growth,
                "severity": "critical" if growth > critical else "warning",
                "cur_regions": cur_regions, "base_regions": base_regions,
                "base_windows": base_windows, "threshold": p("threshold"),
                "critical_threshold": p("critical_threshold"), "measure": p("measure"),
                "z": z, "min_z": p("min_z"),
                "m": m, "max_regions": p("max_insured_regions"),
                "coverage": Fraction(str(p("region_coverage"))), "details": details}

    def _episode(self, st: dict, found: dict) -> dict | None:
        """Attach a surge to its episode (one alert id); the alert if it is to be sent."""
        end = found["end"]
        growth = float(round(found["growth"], 6))
        ep = st.get("ep")
        if ep and end <= date.fromisoformat(ep["first"]) + timedelta(days=WINDOW_DAYS - 1):
            if (SEVERITY_RANK[found["severity"]] <= SEVERITY_RANK[ep["severity"]]
                    and growth <= ep["growth"]):
                return None  # not larger than what the episode already reported
            severity = max(found["severity"], ep["severity"], key=SEVERITY_RANK.get)
            ep = {**ep, "severity": severity, "growth": max(growth, ep["growth"])}
        else:
            ep = {"first": end.isoformat(), "severity": found["severity"], "growth": growth}
        st["ep"] = ep
        return self._alert(st, found, ep)

    def _alert(self, st: dict, f: dict, ep: dict) -> dict:
        institution = st["inst"]
        treatment = st["region"]
        end, m = f["end"], f["m"]
        first = date.fromisoformat(ep["first"])
        k = BASELINE_WINDOWS
        # Increase per insured region, in fen × 4 (exact): 4 × current − sum of baseline.
        increases = []
        for region in sorted(set(f["cur_regions"]) | set(f["base_regions"])):
            cur = f["cur_regions"].get(region, [0, 0])
            base = f["base_regions"].get(region, [0, 0])
            increases.append((cur[1] * k - base[1], region, cur, base))
        increases.sort(key=lambda x: (-x[0], x[1]))
        grown = [x for x in increases if x[0] > 0]
        total_up = sum(x[0] for x in grown)
        named: list[str] = []
        covered = 0
        for inc, region, _, _ in grown:
            if len(named) >= f["max_regions"] or (named and covered >= f["coverage"] * total_up):
                break
            named.append(region)
            covered += inc
        # The current window's settlements, persons and ids (from the kept details).
        persons: dict[str, list] = {}
        rows = []
        for i in range(WINDOW_DAYS):
            entry = f["details"].get((end - timedelta(days=i)).isoformat())
            for sid, row in (detail.items(entry["ids"]) if entry else ()):
                amount = row[m]
                if amount > 0:
                    rows.append((-amount, sid))
                acc = persons.setdefault(row[2], [row[3], 0, 0])
                acc[1] += 1 if amount >= 0 else -1
                acc[2] += amount
        rows.sort()
        top = sorted(((-v[2], pid, v) for pid, v in persons.items()
                      if v[0] in named and v[2] > 0))[:TOP_PERSONS]
        baseline_fen = round(Fraction(f["base_sum"], k))
        duties = {treatment: (f"On-site inspection of {institution}'s care and records for "
                              "the listed settlements")}
        for region in named:
            duties[region] = "Verify enrolment and filings of the listed persons insured here"
        ratio = round(float(f["ratio"]), 4)
        growth = round(float(f["growth"]), 4)
        return make_alert(
            self.rule_id, ep["severity"], "institution", institution,
            regions=[treatment, *named],
            window=days_window(first - timedelta(days=WINDOW_DAYS - 1),
                         first + timedelta(days=WINDOW_DAYS - 1)),
            # The window is complete at the end of its last day: that is when it was
            # judged, in event time.
            detected_at=iso(datetime.fromisoformat(day_start(end + timedelta(days=1)))),
            summary=(f"{institution}: cross-province {f['measure'].replace('_', ' ')} "
                     f"¥{fen_to_yuan_str(f['cur'])} in the 7 days to {end.isoformat()}, "
                     f"{growth:+.0%} over the ¥{fen_to_yuan_str(baseline_fen)} weekly "
                     f"baseline; joint review with {', '.join(named)} (双地联查)"),
            evidence={
                "measure": f["measure"],
                "current_window": days_window(end - timedelta(days=WINDOW_DAYS - 1), end),
                "current": fen_to_yuan_str(f["cur"]),
                "baseline": fen_to_yuan_str(baseline_fen),
                "ratio": ratio,
                "growth": growth,
                "threshold": f["threshold"],
                "critical_threshold": f["critical_threshold"],
                "z": None if f["z"] is None else round(f["z"], 2),
                "min_z": f["min_z"],
                "settlement_count": f["cur_n"],
                "baseline_windows": [
                    {**days_window(last - timedelta(days=WINDOW_DAYS - 1), last),
                     "amount": fen_to_yuan_str(w[1]), "settlements": w[0]}
                    for last, w in f["base_windows"]],
                "insured_regions": {
                    region: {"current": fen_to_yuan_str(cur[1]),
                             "baseline": fen_to_yuan_str(round(Fraction(base[1], k))),
                             "increase": fen_to_yuan_str(round(Fraction(inc, k))),
                             "current_settlements": cur[0]}
                    for inc, region, cur, base in increases[:20]},
                "persons": [{"person_id": pid, "insured_region": v[0], "settlements": v[1],
                             "amount": fen_to_yuan_str(v[2])} for _, pid, v in top],
                "first_detected": first.isoformat(),
            },
            settlement_ids=[sid for _, sid in rows[:TOP_SETTLEMENTS]],
            review="joint",
            duties=duties,
        )


def _add(bucket: dict | None, region: str, n: int, total: int, fund: int) -> dict:
    """A new day bucket with one settlement (or reversal) added."""
    bucket = bucket or {"n": 0, "a": [0, 0], "r": {}}
    rn, rt, rf = bucket["r"].get(region, [0, 0, 0])
    return {"n": bucket["n"] + n, "a": [bucket["a"][0] + total, bucket["a"][1] + fund],
            "r": {**bucket["r"], region: [rn + n, rt + total, rf + fund]}}


def _in_buckets(state: dict) -> dict:
    """The state with its days' settlements in buckets (``rules.detail``): a state
    written before them (no ``layout``) is moved over whole, once."""
    if state.get("layout") == 2:
        return state
    return {**state, "layout": 2, "det": detail.settlements_in_buckets(state.get("det", {}))}
