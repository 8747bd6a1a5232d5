"""A person's recent inpatient stays: the state both person rules keep.

``overlapping_stay`` and ``split_admission`` judge pairs of one person's stays, so
they keep the same record of them: one row per settled stay, the stays a reversal
(冲正) took back, and the newest settlement date seen (event time), from which stays
too old to pair with anything still to come are dropped, and the base both rules
share, :class:`StaysJudgedAtTheClose`. No rule of its own (no ``rule_id``): the
discovery skips it.

>>> from datetime import date, datetime
>>> from types import SimpleNamespace as E
>>> def stay(sid, inst, adm, dis, reverses=None):
...     return E(settlement_id=sid, person_id="P1", visit_type="inpatient",
...              institution_id=inst, treatment_region="440100", insured_region="440900",
...              admitted_on=date.fromisoformat(adm), discharged_on=date.fromisoformat(dis),
...              diagnoses=("I63.9",), total_cost_fen=-100 if reverses else 100,
...              fund_paid_fen=-80 if reverses else 80, reverses=reverses,
...              settled_at=datetime.fromisoformat(dis + "T10:00:00+08:00"))
>>> st = add_stay(None, stay("S1", "H1", "2025-03-01", "2025-03-09"))
>>> add_stay(st, stay("S1", "H1", "2025-03-01", "2025-03-09")) is None   # re-delivered
True
>>> st2, row = take_back(st, stay("R1", "H1", "2025-03-01", "2025-03-09", reverses="S1"))
>>> row[STAY_INSTITUTION], sorted(st2["stays"]), st2["gone"]
('H1', [], {'S1': '2025-03-09'})
"""
from __future__ import annotations

from datetime import date, timedelta

from rules import alerts
from rules.alerts import SHANGHAI, iso
from rules.core import Rule
from streams.records import fen_to_yuan_str

# Stays discharged this many days before the newest settlement the person has are
# dropped: a stay that could still overlap or follow them would have to be longer than
# that (or be settled that late), and the rules' reach (an overlap, a readmission
# within at most 60 days) is far shorter.
KEEP_DAYS = 180

# Row layout (a list, not a dict: the live driver writes the state on every change).
STAY_INSTITUTION, STAY_ADMITTED, STAY_DISCHARGED, STAY_REGION, STAY_INSURED = 0, 1, 2, 3, 4
STAY_DIAGNOSIS, STAY_TOTAL, STAY_FUND, STAY_SETTLED = 5, 6, 7, 8


def is_stay(event) -> bool:
    """An inpatient settlement (or its reversal) with both dates: a stay."""
    return (getattr(event, "kind", "settlement") == "settlement"
            and getattr(event, "visit_type", None) == "inpatient"
            and getattr(event, "admitted_on", None) is not None
            and getattr(event, "discharged_on", None) is not None)


def _row(event) -> list:
    return [event.institution_id, event.admitted_on.isoformat(),
            event.discharged_on.isoformat(), event.treatment_region, event.insured_region,
            event.diagnoses[0] if event.diagnoses else "", event.total_cost_fen,
            event.fund_paid_fen, iso(event.settled_at)]


def _settled_day(event) -> str:
    return event.settled_at.astimezone(SHANGHAI).date().isoformat()


def add_stay(state: dict | None, event) -> dict | None:
    """The state with the stay added, or None when it changes nothing (re-delivered,
    or its original was already reversed)."""
    st = state or {}
    sid = event.settlement_id
    if sid in st.get("stays", {}) or sid in st.get("gone", {}):
        return None
    newest = max(st.get("newest", ""), _settled_day(event))
    horizon = (date.fromisoformat(newest) - timedelta(days=KEEP_DAYS)).isoformat()
    stays = {k: v for k, v in st.get("stays", {}).items() if v[STAY_DISCHARGED] >= horizon}
    if event.discharged_on.isoformat() >= horizon:
        stays[sid] = _row(event)
    gone = {k: v for k, v in st.get("gone", {}).items() if v >= horizon}
    return {"person": event.person_id, "newest": newest, "stays": stays, "gone": gone}


def take_back(state: dict | None, reversal) -> tuple[dict | None, list | None]:
    """(state without the reversed stay, the stay's row); (None, None) when the
    original is not held (older than the horizon, or already taken back)."""
    st = state or {}
    row = st.get("stays", {}).get(reversal.reverses)
    if row is None:
        return None, None
    stays = {k: v for k, v in st["stays"].items() if k != reversal.reverses}
    gone = {**st.get("gone", {}), reversal.reverses: row[STAY_DISCHARGED]}
    return {**st, "stays": stays, "gone": gone}, row


def day_start(day: str) -> str:
    """Midnight (Asia/Shanghai) at the start of an ISO date."""
    return alerts.day_start(date.fromisoformat(day))


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def days_between(first: str, second: str) -> int:
    return (date.fromisoformat(second) - date.fromisoformat(first)).days


def stay_evidence(sid: str, row: list) -> dict:
    """One stay as an inspector reads it: where, when, what for, what it cost."""
    return {"settlement_id": sid, "institution_id": row[STAY_INSTITUTION],
            "treatment_region": row[STAY_REGION], "admitted_on": row[STAY_ADMITTED],
            "discharged_on": row[STAY_DISCHARGED], "primary_diagnosis": row[STAY_DIAGNOSIS],
            "total_cost": fen_to_yuan_str(row[STAY_TOTAL]),
            "fund_paid": fen_to_yuan_str(row[STAY_FUND]), "settled_at": row[STAY_SETTLED]}


def ordered(rows: dict[str, list]) -> list[tuple[str, list]]:
    """Stays in the order an inspector reads them: by admission, then id."""
    return sorted(rows.items(), key=lambda kv: (kv[1][STAY_ADMITTED], kv[1][STAY_DISCHARGED],
                                                kv[0]))


def person_regions(rows: list[list], insured: str) -> list[str]:
    """The treatment regions of the stays (in admission order), then the insured one."""
    return list(dict.fromkeys([*(r[STAY_REGION] for r in rows), insured]))


# --------------------------------------------------------------------------- judged at the close

# A held record: what judging needs of a stay or a reversal, as a list (JSON state).
(HELD_SID, HELD_SETTLED, HELD_PERSON, HELD_INSTITUTION, HELD_ADMITTED, HELD_DISCHARGED,
 HELD_REGION, HELD_INSURED, HELD_DIAGNOSIS, HELD_TOTAL, HELD_FUND, HELD_REVERSES) = range(12)


def _held(event) -> list:
    return [event.settlement_id, iso(event.settled_at), event.person_id,
            event.institution_id, event.admitted_on.isoformat(),
            event.discharged_on.isoformat(), event.treatment_region, event.insured_region,
            event.diagnoses[0] if event.diagnoses else "", event.total_cost_fen,
            event.fund_paid_fen, event.reverses]


def _event(h: list):
    from datetime import datetime
    from types import SimpleNamespace

    return SimpleNamespace(
        kind="settlement", visit_type="inpatient", settlement_id=h[HELD_SID],
        settled_at=datetime.fromisoformat(h[HELD_SETTLED]), person_id=h[HELD_PERSON],
        institution_id=h[HELD_INSTITUTION], admitted_on=date.fromisoformat(h[HELD_ADMITTED]),
        discharged_on=date.fromisoformat(h[HELD_DISCHARGED]), treatment_region=h[HELD_REGION],
        insured_region=h[HELD_INSURED], diagnoses=(h[HELD_DIAGNOSIS],) if h[HELD_DIAGNOSIS]
        else (), total_cost_fen=h[HELD_TOTAL], fund_paid_fen=h[HELD_FUND],
        reverses=h[HELD_REVERSES])


class StaysJudgedAtTheClose(Rule):
    """A person rule over stays whose verdicts do not depend on arrival order.

    Live, a person's records reach the detect stage through several admission
    partitions in any interleaving: judged on arrival, a stay reversed (冲正) before
    its partner arrived would never alert live while a replay of the file raised the
    finding and withdrew it. So ``apply`` only holds each stay or reversal, and the
    event-time timer ``close`` judges the held records of the days that are complete,
    in settlement-time order (ties by settlement id), through ``judge(state, event)``
    — the same verdicts in a live worker and in a replay, for records within the
    allowed lateness. An alert then comes when its stay's day closes.
    """

    def wants(self, event):
        return is_stay(event)

    def apply(self, state, event):
        if not is_stay(event):
            return state, []
        st = state or {}
        sid = event.settlement_id
        if (sid in st.get("stays", {}) or sid in st.get("gone", {})
                or any(h[HELD_SID] == sid for h in st.get("held", []))):
            return state, []  # re-delivered (or a stay already taken back)
        return {**st, "held": [*st.get("held", []), _held(event)]}, []

    def due(self, state) -> bool:
        return bool((state or {}).get("held"))

    def close(self, state, midnight):
        held = (state or {}).get("held")
        if not held:
            return state, []
        due = [h for h in held if datetime_of(h) < midnight]
        if not due:
            return state, []
        rest = [h for h in held if datetime_of(h) >= midnight]
        st = {k: v for k, v in state.items() if k != "held"} or None
        fired = []
        for h in sorted(due, key=lambda h: (datetime_of(h), h[HELD_SID])):
            st, alerts_ = self.judge(st, _event(h))
            fired += alerts_
        st = dict(st or {})
        if rest:
            st["held"] = rest
        return st or None, fired

    def judge(self, state, event):
        raise NotImplementedError


def datetime_of(h: list):
    from datetime import datetime

    return datetime.fromisoformat(h[HELD_SETTLED])
