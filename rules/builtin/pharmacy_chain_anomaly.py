"""pharmacy_chain_anomaly — a chain across provinces with abnormal fund claims (虚开药品发票).

The case the sources tell: a pharmacy chain registered in Shandong with branches in
Jiangsu and Anhui forged drug invoices for 14 months (12 million yuan) before three
regulators connected it. Supervision is local, so each region saw a few branches
doing a little more business; only the chain as a whole showed the pattern. This
rule watches each chain with pharmacy branches in **two or more provinces** and
looks for the two traces forged claims leave:

* **a jump in fund claims against the chain's own baseline** — the fund paid for the
  chain's pharmacy settlements in the last ``current_weeks`` weeks (default 2: forged
  claims go on for months, a noisy week does not), against the 4 weeks before them;
  judged for the whole chain and for each province's branches alone (inflating one
  province's branches is diluted in the chain's total). Each week's claims leave out
  its ``trim_largest`` largest sales (a few costly prescriptions, such as targeted
  cancer drugs, make a noisy week). A jump is growth above ``threshold`` that also
  exceeds ``min_z`` standard deviations of what chance gives — the larger of the
  baseline weeks' own spread (4 weeks estimate it roughly) and the spread the sales
  themselves imply (a week's claims are a sum of about n sales: variance n × the mean
  squared sale) — with enough volume in the baseline (``min_baseline_settlements``,
  ``min_baseline_yuan`` a week) and ``min_history_days`` of history;
* **the same persons served in two provinces within a day** — a person's card used
  at the chain's branches in two provinces within ``same_person_hours`` (a stock of
  harvested cards billed wherever invoices are forged; an honest customer does not
  buy medicine in two provinces in one day). ``min_shared_persons`` such persons in
  the 7-day window make a finding, so that one traveller near a border does not.

How it is judged (event time, Asia/Shanghai calendar days): ``apply`` only adds a
pharmacy settlement of a chain to its day (per branch: count, fund paid, its sum of
squares and the day's largest sales) and keeps the settlements of the last 9 days
(person, branch, time, amount); when the watermark passes midnight the drivers call
``close``, which judges the current window ending with each newly completed day,
oldest first. Only complete days decide.

* **Alert identity**: the first day D a finding is made opens an *episode*; findings
  on the windows ending D .. D+6 keep its ``alert_id`` (window D-6 00:00 to D+7 00:00),
  re-emitted only when stronger (higher severity, growth or count of shared
  persons). A finding still there after D+6 opens a new episode: one reminder a week
  for a fraud that goes on.
* **Severity**: warning; critical when the growth exceeds ``critical_threshold`` or
  both traces are present.
* **Reversals** (冲正): an original among the last 9 days is taken out of its day
  (and of the shared persons); an older one is subtracted on the reversal's day.
* **Regions**: the regions of the branches that drive the finding (the largest
  increases, the branches that served shared persons) first, then every other region
  the chain has branches in, then the insured regions of the shared persons — a
  joint review across provinces, each with its duty. The chain's branches come from
  the pool registry (``institutions[].chain_id``) and from the stream. Per-province
  overrides use the province of the chain's first branch seen.

State is bounded: day aggregates per branch for the days the next current window and
its baseline need (at most 49), settlements for 9 days, the branch list (the chain's
size). A day's branches and settlements are kept in buckets (``rules.detail``): a
settlement costs about the same on a large chain's busiest day as on a small one's.

>>> from datetime import datetime, timedelta
>>> from types import SimpleNamespace as E
>>> from rules.alerts import SHANGHAI
>>> rule = PharmacyChainAnomaly(min_baseline_settlements=1, min_baseline_yuan=10)
>>> def sale(day, branch, region, person, yuan, hour=10):
...     t = datetime(2025, 3, 3, hour, tzinfo=SHANGHAI) + timedelta(days=day)
...     return E(kind="settlement", settlement_id=f"{branch}-{day}-{person}-{hour}",
...              settled_at=t, person_id=person, institution_id=branch,
...              institution_type="pharmacy", chain_id="PCH9", treatment_region=region,
...              insured_region=region, fund_paid_fen=yuan * 100, reverses=None)
>>> state, found = None, []
>>> for day in range(42):
...     for n, (branch, region) in enumerate([("P440300001", "440300"),
...                                           ("P450100001", "450100")]):
...         state, _ = rule.apply(state, sale(day, branch, region, f"P{n}{day % 3}",
...                                           100 + day % 3 * 10))
...     if day >= 35:   # the last week: the same three cards used in both provinces
...         for k in range(3):
...             state, _ = rule.apply(state, sale(day, "P440300001", "440300", f"X{k}",
...                                               300, hour=9))
...             state, _ = rule.apply(state, sale(day, "P450100001", "450100", f"X{k}",
...                                               300, hour=15))
...     state, fired = rule.close(state, sale(day + 1, "", "", "", 0).settled_at.replace(hour=0))
...     found += fired
>>> a = found[-1]
>>> a["severity"], a["review"], a["regions"][:2], a["evidence"]["shared_person_count"]
('critical', 'joint', ['440300', '450100'], 3)
>>> a["evidence"]["scope"], a["evidence"]["growth"] > 1   # the largest of the jumps
('44', True)
>>> len({x["alert_id"] for x in found})   # one episode: re-emitted as it grew
1
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from fractions import Fraction

from rules import detail
from rules.alerts import SHANGHAI, day_start, days_window, iso, make_alert, shanghai_day
from rules.core import Param, Rule
from streams.records import fen_to_yuan_str

WINDOW_DAYS = 7
BASELINE_WINDOWS = 4
MAX_WEEKS = 3
# Day aggregates for the current window and its baseline, at the longest current window.
KEPT_BEHIND = WINDOW_DAYS * (MAX_WEEKS + BASELINE_WINDOWS)
DETAIL_DAYS = 9  # settlements: the window, a day before it (shared persons), reversals
MAX_REGIONS = 10
TOP_SETTLEMENTS = 50
TOP_PERSONS = 10
MAX_TRIM = 5  # largest sales kept per branch and day: what trim_largest may leave out
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def _square(fen: int) -> int:
    """A sale's square in whole yuan² (kept small enough for any JSON integer)."""
    return (abs(fen) // 100) ** 2


class PharmacyChainAnomaly(Rule):
    rule_id = "pharmacy_chain_anomaly"
    description = ("A pharmacy chain with branches in two or more provinces whose fund "
                   "claims jump against their own baseline, or whose branches in different "
                   "provinces serve the same persons within a day (虚开药品发票)")
    subject_kind = "chain"
    key_kind = "chain"
    params = {
        "threshold": Param(float, 0.5, "relative growth of the fund claims over the "
                           "baseline above which they jump (0.5 = current > 1.5 × "
                           "baseline)", minimum=0.0),
        "critical_threshold": Param(float, 1.0, "relative growth above which the alert is "
                                    "critical", minimum=0.0),
        "min_z": Param(float, 3.5, "the increase must also exceed min_z standard deviations "
                       "of what chance gives (the larger of the baseline weeks' spread and "
                       "the spread the sales imply; 0 = off)", minimum=0.0),
        "min_baseline_settlements": Param(int, 12, "settlements per baseline window (mean "
                                          "of the 4) a scope (the chain, or one province's "
                                          "branches) needs to be judged", minimum=1),
        "min_baseline_yuan": Param(int, 300, "fund claims per baseline window (mean of the "
                                   "4, in yuan) a scope needs to be judged", minimum=0),
        "current_weeks": Param(int, 2, "length of the current window in weeks, compared "
                               "with the 4 weeks before it: forged claims go on, a noisy "
                               "week is halved in two", minimum=1, maximum=MAX_WEEKS),
        "min_history_days": Param(int, 42, "days since the chain's first settlement before "
                                  "its claims are judged (42 = the 2-week current window "
                                  "and 4 baseline weeks)", minimum=35),
        "trim_largest": Param(int, 3, "the largest sales left out of each 7-day window's "
                              "claims before comparing (a few costly prescriptions, such "
                              "as targeted cancer drugs, make a noisy week)", minimum=0,
                              maximum=5),
        "same_person_hours": Param(int, 24, "hours within which one person served by "
                                   "branches in two provinces counts as shared",
                                   minimum=1, maximum=72),
        "min_shared_persons": Param(int, 2, "persons served in two provinces within "
                                    "same_person_hours, in the 7-day window, that make a "
                                    "finding", minimum=1),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The registry's branches: a chain is judged as spanning provinces even before
        # every branch has settled something in the stream.
        self._registered: dict[str, dict[str, str]] = {}
        for inst in (self.registry.institutions.values() if self.registry else ()):
            if inst.get("chain_id") and inst.get("type") == "pharmacy" and inst.get("region"):
                self._registered.setdefault(inst["chain_id"], {})[inst["id"]] = \
                    str(inst["region"])

    def wants(self, event):
        return (getattr(event, "kind", None) == "settlement"
                and getattr(event, "chain_id", None) is not None
                and getattr(event, "institution_type", None) == "pharmacy")

    # ------------------------------------------------------------------ state
    def apply(self, state, event):
        """Add a chain pharmacy's settlement to its day; judging waits for ``close``."""
        if not self.wants(event):
            return state, []
        st = _in_buckets(state or {})
        day = shanghai_day(event.settled_at)
        done = date.fromisoformat(st["done"]) if "done" in st else None
        if done is not None and day < done - timedelta(days=KEPT_BEHIND - 2):
            return state, []  # too late for any window still to be judged
        sid = event.settlement_id
        det = st.get("det", {})
        if detail.held(det, sid):
            return state, []  # re-delivered
        key = day.isoformat()
        days, det = dict(st.get("days", {})), dict(det)
        inst = event.institution_id
        if not (event.reverses and self._take_back(days, det, event.reverses, day)):
            n, fund, top, sq = detail.get(days.get(key), inst) or [0, 0, [], 0]
            if event.fund_paid_fen > 0:
                top = sorted([*top, event.fund_paid_fen], reverse=True)[:MAX_TRIM]
            sign = -1 if event.reverses else 1  # an old original: taken out on this day
            days[key] = detail.put(days.get(key), inst, [
                n + sign, fund + event.fund_paid_fen, top,
                sq + sign * _square(event.fund_paid_fen)])
        entry = det.get(key, {"ids": {}, "x": []})
        det[key] = {"ids": detail.put(entry["ids"], sid, [
            inst, event.person_id, event.fund_paid_fen,
            int(event.settled_at.timestamp()), event.insured_region]), "x": entry["x"]}
        branches = st.get("branches", {})
        if inst not in branches or branches[inst][1] > key:
            branches = {**branches, inst: [event.treatment_region, min(
                key, branches.get(inst, [None, key])[1])]}
        first = min(st.get("first", key), key)
        return {**st, "chain": event.chain_id, "first": first, "branches": branches,
                "days": days, "det": det}, []

    @staticmethod
    def _take_back(days: dict, det: dict, original: str, day: date) -> bool:
        """Take a reversed settlement out of its day if it is still held in detail."""
        oldest = (day - timedelta(days=DETAIL_DAYS - 1)).isoformat()
        for dkey, entry in det.items():
            row = (detail.get(entry["ids"], original)
                   if oldest <= dkey <= day.isoformat() else None)
            if row is None:
                continue
            inst, _, fund, _, _ = row
            det[dkey] = {"ids": detail.put(entry["ids"], original, None),
                         "x": [*entry["x"], original]}
            n, total, top, sq = detail.get(days.get(dkey), inst) or [0, 0, [], 0]
            if fund in top:  # the next largest of the day is not known: left out
                top = [*top[:top.index(fund)], *top[top.index(fund) + 1:]]
            days[dkey] = detail.put(days.get(dkey), inst,
                                    [n - 1, total - fund, top, sq - _square(fund)])
            return True
        return False

    def close(self, state, midnight):
        """Judge the 7-day window ending on each completed day not judged yet."""
        if not state or "first" not in state:
            return state, []
        last = midnight.date() - timedelta(days=1)
        done = date.fromisoformat(state["done"]) if "done" in state else None
        if (done or date.fromisoformat(state["first"]) - timedelta(days=1)) >= last:
            return state, []
        new = dict(_in_buckets(state))
        alerts: dict[str, dict] = {}
        end = done + timedelta(days=1) if done else date.fromisoformat(new["first"])
        while end <= last:
            found = self._judge(new, end)
            if found:
                alert = self._episode(new, found)
                if alert:
                    alerts[alert["alert_id"]] = alert
            end += timedelta(days=1)
        new["done"] = last.isoformat()
        horizon = (last - timedelta(days=KEPT_BEHIND - 2)).isoformat()
        new["days"] = {d: v for d, v in new.get("days", {}).items() if d >= horizon}
        horizon = (last - timedelta(days=DETAIL_DAYS - 2)).isoformat()
        new["det"] = {d: v for d, v in new.get("det", {}).items() if d >= horizon}
        return new, list(alerts.values())

    # ------------------------------------------------------------------ judging
    def _branches(self, st: dict, end: date) -> dict[str, str]:
        """Branch → region: the registry's, and those seen in the stream by ``end``."""
        seen = {inst: region for inst, (region, first) in st.get("branches", {}).items()
                if first <= end.isoformat()}
        return {**self._registered.get(st["chain"], {}), **seen}

    def _judge(self, st: dict, end: date) -> dict | None:
        branches = self._branches(st, end)
        if len({r[:2] for r in branches.values()}) < 2:
            return None  # a chain in one province is its own region's matter
        # The first branch seen (ties by id): the same in every driver and order.
        province = min(st["branches"].items(), key=lambda kv: (kv[1][1], kv[0]))[1][0][:2]

        def p(name):
            return self.param(name, province)

        days = st.get("days", {})

        def window(last: date) -> dict[str, list]:
            acc: dict[str, list] = {}
            for i in range(WINDOW_DAYS):
                for inst, (n, fund, top, sq) in detail.items(
                        days.get((last - timedelta(days=i)).isoformat())):
                    a = acc.setdefault(inst, [0, 0, [], 0])
                    a[0] += n
                    a[1] += fund
                    a[2] = a[2] + top
                    a[3] += sq
            return acc

        trim = p("trim_largest")

        def measure(win: dict[str, list], members) -> tuple[int, int, int]:
            """(settlements, fund claims and their sum of squares, both without the
            window's ``trim`` largest sales)."""
            rows = [win[i] for i in members if i in win]
            largest = sorted((x for r in rows for x in r[2]), reverse=True)[:trim]
            return (sum(r[0] for r in rows), sum(r[1] for r in rows) - sum(largest),
                    sum(r[3] for r in rows) - sum(_square(x) for x in largest))

        weeks = p("current_weeks")
        # The current window is ``weeks`` 7-day windows ending ``end``; the baseline the
        # 4 windows before it.
        judged = [window(end - timedelta(days=WINDOW_DAYS * k)) for k in range(weeks)]
        current = judged[0]
        base_ends = [end - timedelta(days=WINDOW_DAYS * (weeks - 1 + k))
                     for k in range(1, BASELINE_WINDOWS + 1)]
        base = [window(b) for b in base_ends]
        history = (end - date.fromisoformat(st["first"])).days + 1
        jumps = []
        scopes = {"chain": set(branches) | set(current)}
        for inst in set(branches) | set(current):
            region = branches.get(inst) or st["branches"].get(inst, [""])[0]
            scopes.setdefault(region[:2], set()).add(inst)
        slices = {}
        threshold = Fraction(str(p("threshold")))
        min_z = p("min_z")
        for scope, members in sorted(scopes.items()):
            cur_n = cur = 0
            for win in judged:
                n, amount, _ = measure(win, members)
                cur_n, cur = cur_n + n, cur + amount
            counts, amounts, squares = zip(*(measure(w, members) for w in base))
            base_sum = sum(amounts)
            slices[scope] = {"cur": cur, "cur_n": cur_n, "base_sum": base_sum,
                             "base_n": sum(counts)}
            if (history < p("min_history_days")
                    or sum(counts) < BASELINE_WINDOWS * p("min_baseline_settlements")
                    or base_sum < BASELINE_WINDOWS * p("min_baseline_yuan") * 100
                    or base_sum <= 0):
                continue
            growth = Fraction(cur * BASELINE_WINDOWS, base_sum * weeks) - 1
            if growth <= threshold:
                continue
            # How far a week strays by chance: the larger of the baseline weeks' own
            # spread (4 windows estimate it roughly) and what the sales themselves
            # imply (a week's claims are a sum of about n sales: variance n × the mean
            # squared sale). The current window adds ``weeks`` of it, the baseline
            # mean it is compared with (weeks / 4)² × 4.
            mean = base_sum / BASELINE_WINDOWS
            spread = sum((a - mean) ** 2 for a in amounts) / BASELINE_WINDOWS
            implied = sum(squares) / BASELINE_WINDOWS * 10000
            sd = (max(spread, implied) * (weeks + weeks * weeks / BASELINE_WINDOWS)) ** 0.5
            excess = cur - weeks * mean
            if excess < min_z * sd:
                continue
            jumps.append((growth, scope, excess / sd if sd else None))
        shared = self._shared(st, end, branches, p("same_person_hours"))
        shared_hit = len(shared) >= p("min_shared_persons")
        if not jumps and not shared_hit:
            return None
        jumps.sort(key=lambda j: (-j[0], j[1] != "chain", j[1]))  # a tie: the whole chain
        growth, scope, z = jumps[0] if jumps else (None, None, None)
        critical = (growth is not None and growth > Fraction(str(p("critical_threshold")))) \
            or (bool(jumps) and shared_hit)
        return {"end": end, "jump": jumps[0] if jumps else None, "scope": scope,
                "growth": growth, "z": z, "shared": shared, "shared_hit": shared_hit,
                "severity": "critical" if critical else "warning", "slices": slices,
                "current": {inst: [sum(w.get(inst, [0, 0])[0] for w in judged),
                                   sum(w.get(inst, [0, 0])[1] for w in judged)]
                            for inst in set().union(*judged)},
                "base": base, "base_ends": base_ends, "weeks": weeks,
                "branches": branches, "jumping": [j[1] for j in jumps],
                "params": {name: p(name) for name in self.params}}

    @staticmethod
    def _shared(st: dict, end: date, branches: dict[str, str], hours: int) -> dict:
        """Persons served by branches in two provinces within ``hours``, the later sale
        in the window ending ``end``: person → their sales (settlement id, row)."""
        first = end - timedelta(days=WINDOW_DAYS - 1)
        lo = (first - timedelta(days=(hours + 23) // 24)).isoformat()
        by_person: dict[str, list] = {}
        for dkey, entry in st.get("det", {}).items():
            if not lo <= dkey <= end.isoformat():
                continue
            for sid, row in detail.items(entry["ids"]):
                if row[2] > 0:  # a reversal's own negative line is no sale
                    by_person.setdefault(row[1], []).append((row[3], sid, row, dkey))
        start = first.isoformat()
        found = {}
        for person, sales in by_person.items():
            if len(sales) < 2:
                continue
            sales.sort()
            hits = set()
            for i, (t1, s1, r1, _d1) in enumerate(sales):
                for t2, s2, r2, d2 in sales[i + 1:]:
                    if t2 - t1 > hours * 3600:
                        break
                    p1 = branches.get(r1[0], "")[:2]
                    p2 = branches.get(r2[0], "")[:2]
                    if p1 and p2 and p1 != p2 and d2 >= start:
                        hits.update((s1, s2))
            if hits:
                found[person] = sorted((s, r) for _, s, r, _ in sales if s in hits)
        return found

    def _episode(self, st: dict, found: dict) -> dict | None:
        end = found["end"]
        growth = float(round(found["growth"], 6)) if found["growth"] is not None else 0.0
        shared = len(found["shared"])
        ep = st.get("ep")
        if ep and end <= date.fromisoformat(ep["first"]) + timedelta(days=WINDOW_DAYS - 1):
            if (SEVERITY_RANK[found["severity"]] <= SEVERITY_RANK[ep["severity"]]
                    and growth <= ep["growth"] and shared <= ep["shared"]):
                return None  # no stronger than what the episode already reported
            ep = {**ep, "severity": max(found["severity"], ep["severity"],
                                        key=SEVERITY_RANK.get),
                  "growth": max(growth, ep["growth"]), "shared": max(shared, ep["shared"])}
        else:
            ep = {"first": end.isoformat(), "severity": found["severity"], "growth": growth,
                  "shared": shared}
        st["ep"] = ep
        return self._alert(st, found, ep)

    def _alert(self, st: dict, f: dict, ep: dict) -> dict:
        chain = st["chain"]
        end = f["end"]
        branches = f["branches"]
        k = BASELINE_WINDOWS
        # Per branch: current and baseline (× 4, exact), the increase drives the regions.
        per_branch = []
        for inst in sorted(set(branches) | set(f["current"])):
            cur_n, cur = f["current"].get(inst, [0, 0])[:2]
            base = sum(w.get(inst, [0, 0])[1] for w in f["base"]) * f["weeks"]
            per_branch.append((cur * k - base, inst, cur_n, cur, base))
        driving: list[str] = []
        if f["jump"]:
            jumping = set(f["jumping"])
            grown = sorted(((inc, inst) for inc, inst, *_ in per_branch if inc > 0
                            and ("chain" in jumping or branches.get(inst, "")[:2] in jumping)),
                           key=lambda x: (-x[0], x[1]))
            total = sum(inc for inc, _ in grown)
            covered = 0
            for inc, inst in grown:
                if covered >= 0.8 * total:
                    break
                driving.append(branches.get(inst, ""))
                covered += inc
        shared_branches = sorted({row[0] for sales in f["shared"].values()
                                  for _, row in sales})
        driving += [branches.get(i, "") for i in shared_branches]
        driving = [r for r in dict.fromkeys(driving) if r]
        others = sorted(set(branches.values()) - set(driving))
        insured = sorted({row[4] for sales in f["shared"].values() for _, row in sales}
                         - set(driving) - set(others))
        regions = [*driving, *others, *insured][:MAX_REGIONS]
        if len(regions) < 2:  # a joint review names both sides: every branch region
            regions = list(dict.fromkeys([*regions, *sorted(set(branches.values()))]))
        by_region: dict[str, list[str]] = {}
        for inst, region in sorted(branches.items()):
            by_region.setdefault(region, []).append(inst)
        duties = {}
        for region in regions:
            here = ", ".join(by_region.get(region, []))
            if region in driving:
                duties[region] = (f"On-site inspection of {here}: purchase invoices and stock "
                                  "against the drug sales claimed (进销存), prescriptions, "
                                  "the listed settlements")
            elif region in others:
                duties[region] = (f"Check the chain's branches here ({here}) for the same "
                                  "pattern and share the findings with the other regions")
            else:
                duties[region] = ("Contact the listed persons insured here: did they buy "
                                  "the drugs claimed at these branches on these dates")
        slices = {
            scope: {"current": fen_to_yuan_str(s["cur"]),
                    "baseline": fen_to_yuan_str(round(Fraction(s["base_sum"] * f["weeks"], k))),
                    "growth": (round(s["cur"] * k / (s["base_sum"] * f["weeks"]) - 1, 4)
                               if s["base_sum"] > 0 else None),
                    "current_settlements": s["cur_n"],
                    "baseline_settlements": round(s["base_n"] / k, 1)}
            for scope, s in f["slices"].items()}
        shared_out = [{"person_id": person, "sales": [
            {"settlement_id": sid, "institution_id": row[0],
             "region": branches.get(row[0], ""), "insured_region": row[4],
             "settled_at": iso(datetime.fromtimestamp(row[3], SHANGHAI)),
             "fund_paid": fen_to_yuan_str(row[2])} for sid, row in sales]}
            for person, sales in sorted(f["shared"].items())[:TOP_PERSONS]]
        ids = [sid for sales in f["shared"].values() for sid, _ in sales]
        # The current window's costliest sales at the driving branches.
        rows = []
        first_day = end - timedelta(days=WINDOW_DAYS - 1)
        for dkey, entry in st.get("det", {}).items() if f["jump"] else ():
            if first_day.isoformat() <= dkey <= end.isoformat():
                rows += [(-row[2], sid) for sid, row in detail.items(entry["ids"])
                         if branches.get(row[0]) in driving and row[2] > 0]
        ids += [sid for _, sid in sorted(rows)]
        ids = list(dict.fromkeys(ids))[:TOP_SETTLEMENTS]
        scope = f["scope"]
        params = f["params"]
        evidence = {
            "chain_id": chain,
            "provinces": sorted({r[:2] for r in branches.values()}),
            # The span judged: the current weeks for a jump, the 7 days for shared persons.
            "current_window": days_window(end - timedelta(
                days=WINDOW_DAYS * (f["weeks"] if f["jump"] else 1) - 1), end),
            "scope": scope,
            "growth": None if f["growth"] is None else round(float(f["growth"]), 4),
            "z": None if f["z"] is None else round(f["z"], 2),
            "scopes": slices,
            "branches": {inst: {"region": branches.get(inst, ""),
                                "current": fen_to_yuan_str(cur),
                                "baseline": fen_to_yuan_str(round(Fraction(base, k))),
                                "current_settlements": cur_n}
                         for _, inst, cur_n, cur, base in per_branch},
            "baseline_windows": [days_window(b - timedelta(days=WINDOW_DAYS - 1), b)
                                 for b in f["base_ends"]],
            "shared_person_count": len(f["shared"]),
            "shared_persons": shared_out,
            "first_detected": ep["first"],
            **{name: params[name] for name in ("threshold", "critical_threshold", "min_z",
                                               "same_person_hours", "min_shared_persons")},
        }
        if scope is not None:
            s = f["slices"][scope]
            # The baseline over as many weeks as the current window, to compare alike.
            weeks = f["weeks"]
            evidence.update(current=fen_to_yuan_str(s["cur"]),
                            baseline=fen_to_yuan_str(round(Fraction(s["base_sum"] * weeks, k))),
                            ratio=round(float(Fraction(s["cur"] * k, s["base_sum"] * weeks)),
                                        4))
        what = []
        if scope is not None:
            where = "the chain" if scope == "chain" else f"its province-{scope} branches"
            what.append(f"fund claims of {where} {float(f['growth']):+.0%} over their "
                        f"4-week baseline in the {7 * f['weeks']} days to {end.isoformat()}")
        if f["shared_hit"]:
            what.append(f"{len(f['shared'])} person(s) served by branches in two provinces "
                        f"within {params['same_person_hours']} hours")
        first = date.fromisoformat(ep["first"])
        return make_alert(
            self.rule_id, ep["severity"], "chain", chain, regions=regions,
            window=days_window(first - timedelta(days=WINDOW_DAYS - 1),
                         first + timedelta(days=WINDOW_DAYS - 1)),
            detected_at=iso(datetime.fromisoformat(day_start(end + timedelta(days=1)))),
            summary=(f"{chain} (branches in {len(evidence['provinces'])} provinces): "
                     + "; ".join(what) + " — joint review (虚开药品发票?)"),
            evidence=evidence, settlement_ids=ids,
            review="joint" if len(regions) > 1 else "single", duties=duties)


def _in_buckets(state: dict) -> dict:
    """The state with its days' branches and settlements in buckets (``rules.detail``):
    a state written before them (no ``layout``) is moved over whole, once."""
    if state.get("layout") == 2:
        return state
    return {**state, "layout": 2,
            "days": {d: detail.bucketed(v) for d, v in state.get("days", {}).items()},
            "det": detail.settlements_in_buckets(state.get("det", {}))}
