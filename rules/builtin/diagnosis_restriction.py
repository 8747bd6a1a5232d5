"""diagnosis_restriction — a diagnosis that contradicts the patient's sex or age.

The regulator's knowledge bases restrict many diagnoses to one sex (性别限定) or an
age range (年龄限定): a pregnancy (O00–O99) for a man, a prostate diagnosis (N40–N42,
C61) for a woman, a perinatal condition (P00–P96) for an adult, senile cataract
(H25) for a child. Such a code on a bill is either a coding error that moves the
case into a better-paid group, or a bill for a person who was never treated (the
insurance card of a relative, 冒名就医). The institution's own supervision center
(the treatment region) is asked to check the coding and the medical record.

The constraints are a table (``rules.knowledge``): a CSV file of ICD-10 codes or
prefixes with the allowed sex and ages, named by the ``table`` parameter (relative
paths are read from this folder; the example ``diagnosis_restriction.csv`` ships
with the package and is *not* an official list). A province sets its own table
under ``[rules.diagnosis_restriction.provinces."<prefix>"] table = "/path.csv"``;
the province is the treatment side's. The longest matching prefix of each
diagnosis (primary first; only the primary with ``primary_only``) decides.

One alert per settlement (subject ``settlement``, the settlement_id; window = the
settlement's own time, ``start = end = settled_at``, so the ``alert_id`` is stable
for the same settlement), listing every diagnosis in conflict; the first one is
named in the evidence. Warning; critical when the fund paid reaches
``critical_fund_paid`` yuan. A reversal (冲正) never alerts (the original's alert
stands: the miscoded bill was paid). No state: each settlement is judged alone.

>>> from datetime import datetime
>>> from types import SimpleNamespace as E
>>> rule = DiagnosisRestriction()
>>> def bill(sex, age, *dx, fund=300000):
...     return E(settlement_id="S1", settled_at=datetime.fromisoformat(
...         "2025-03-05T10:00:00+08:00"), person_id="P1", sex=sex, age=age,
...         institution_id="H440100001", treatment_region="440100", diagnoses=dx,
...         total_cost_fen=fund + 50000, fund_paid_fen=fund, reverses=None)
>>> rule.apply(None, bill("F", 28, "O80"))
(None, [])
>>> state, alerts = rule.apply(None, bill("M", 34, "O80"))
>>> alerts[0]["severity"], alerts[0]["evidence"]["diagnosis"], alerts[0]["evidence"]["reason"]
('warning', 'O80', 'sex')
>>> alerts[0]["evidence"]["entry"]["code"], alerts[0]["evidence"]["entry"]["constraint"]
('O', 'female, aged 10–55')
>>> rule.apply(None, bill("F", 66, "I10", "N40", fund=1500000))[1][0]["severity"]
'critical'
"""
from __future__ import annotations

from pathlib import Path

from rules.alerts import iso, make_alert
from rules.core import Param
from rules.knowledge import KnowledgeRule
from streams.records import fen_to_yuan_str

SEX_WORDS = {"M": "male", "F": "female"}


class DiagnosisRestriction(KnowledgeRule):
    rule_id = "diagnosis_restriction"
    description = ("A settlement whose diagnosis contradicts the patient's sex or age per "
                   "a knowledge table (性别/年龄限定)")
    subject_kind = "settlement"
    key_kind = "institution"
    params = {
        "table": Param(str, "diagnosis_restriction.csv",
                       "CSV knowledge table of ICD-10 codes or prefixes with the allowed "
                       "sex and ages (relative paths are read from rules/builtin)"),
        "critical_fund_paid": Param(float, 10000.0,
                                    "fund paid (yuan) from which the alert is critical",
                                    minimum=0),
        "primary_only": Param(bool, False,
                              "check only the primary diagnosis, not the secondary ones"),
    }

    def wants(self, event):
        return bool(getattr(event, "diagnoses", None)) and not event.reverses

    def apply(self, state, event):
        diagnoses = getattr(event, "diagnoses", None)
        if not diagnoses or event.reverses:
            return state, []
        province = event.treatment_region[:2]
        table = self.table_for(province)
        if self.param("primary_only", province):
            diagnoses = diagnoses[:1]
        conflicts = []
        for position, code in enumerate(diagnoses):
            entry = table.lookup(code)
            if entry is not None:
                reason = entry.violation(event.sex, event.age)
                if reason is not None:
                    conflicts.append((position, code, entry, reason))
        if not conflicts:
            return state, []
        return state, [self._alert(event, conflicts, table.name, province)]

    def _alert(self, event, conflicts, table_name, province):
        position, code, entry, reason = conflicts[0]
        critical_fen = round(self.param("critical_fund_paid", province) * 100)
        severity = "critical" if event.fund_paid_fen >= critical_fen else "warning"
        at = iso(event.settled_at)
        sex_word = SEX_WORDS.get(event.sex, event.sex)
        region = event.treatment_region
        fund = fen_to_yuan_str(event.fund_paid_fen)
        return make_alert(
            self.rule_id, severity, "settlement", event.settlement_id,
            regions=[region],
            window={"start": at, "end": at},
            detected_at=at,
            summary=(f"{event.settlement_id} at {event.institution_id}: diagnosis {code} "
                     f"({entry.description}) is restricted to: {entry.constraint}; the patient "
                     f"is {sex_word}, aged {event.age}; fund paid ¥{fund}"),
            evidence={
                "diagnosis": code,
                "position": position,  # 0 = the primary diagnosis
                "reason": reason,
                "entry": entry.as_evidence(),
                "table": Path(table_name).name,
                "sex": event.sex,
                "age": event.age,
                "person_id": event.person_id,
                "institution_id": event.institution_id,
                "total_cost": fen_to_yuan_str(event.total_cost_fen),
                "fund_paid": fund,
                "critical_fund_paid": fen_to_yuan_str(critical_fen),
                "conflicts": [{"diagnosis": c, "position": p, "reason": r,
                               "entry": e.code, "constraint": e.constraint}
                              for p, c, e, r in conflicts],
                "settlement_count": 1,
            },
            settlement_ids=[event.settlement_id],
            duties={region: "check the coding against the medical record and the "
                            "patient's identity (性别/年龄限定); recover the fund's payment "
                            "if the bill is wrong"},
        )
