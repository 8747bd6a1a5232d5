"""What of an alert may leave fundwatch in a notification.

The store keeps alerts whole — an auditor with access needs the person ids and
settlement ids to pull the records. A notification goes to an e-mail box or a chat
group, so it carries no raw person id and no name: a person appears as a keyed
pseudonym, ``psn-`` + the first 16 hex digits of HMAC-SHA256(key, person_id). The
same person has the same pseudonym in every notification (a center can see that two
alerts concern one person) but without the key nobody can go from an id to its
pseudonym or back; someone with store access computes it with ``fundwatch alerts
show``. Settlement ids are not sent either (only their count).

What is sent is an allowlist (:func:`notification_view`), not the alert minus a
denylist: a field a rule adds later stays home until someone decides it may go.

>>> p = Pseudonymizer("a-key-of-at-least-16-chars")
>>> p("P000123") == p("P000123"), p("P000123").startswith("psn-"), len(p("P000123"))
(True, True, 20)
>>> alert = {"alert_id": "fw-0123456789", "rule_id": "overlapping_stay", "severity": "warning",
...          "subject": {"kind": "person", "id": "P000123"}, "regions": ["440100"],
...          "review": "single", "window": {"start": "s", "end": "e"}, "detected_at": "d",
...          "summary": "P000123 inpatient in two hospitals at once",
...          "evidence": {"days": 3, "person_name": "张三"}, "settlement_ids": ["S1", "S2"]}
>>> view = notification_view(alert, p)
>>> "P000123" in str(view) or "张三" in str(view) or "S1" in str(view)
False
>>> view["summary"] == p("P000123") + " inpatient in two hospitals at once"
True
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Callable

# Keys under which the rules put person ids (alone, in lists, or in records).
PERSON_ID_KEYS = frozenset({"person_id", "person_ids", "patient_id", "insured_person"})
# Keys whose value is persons: ids, or records about persons (whose "id" is one).
PERSON_KEYS = PERSON_ID_KEYS | {"person", "persons", "patients"}
# Keys that hold a person's name, wherever they appear: never sent, not even hashed.
NAME_KEYS = frozenset({"name", "person_name", "patient_name", "full_name", "insured_name",
                       "姓名"})
# Evidence figures a notification may carry: scalars under these keys or any key
# that is clearly a number (counts, ratios, money), never free text.
SAFE_TEXT_KEYS = frozenset({"measure", "month", "capital_region", "institution_id",
                            "chain_id", "pool", "band", "insurance_type", "region"})
MAX_PERSONS_SHOWN = 10
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_:.\-]{1,64}$")
_DECIMAL = re.compile(r"^-?[0-9]{1,15}(\.[0-9]{1,4})?$")


class Pseudonymizer:
    """Keyed, stable pseudonyms for person ids."""

    def __init__(self, secret: str | bytes) -> None:
        if not secret or len(secret) < 16:
            raise ValueError("the pseudonym key must be at least 16 characters")
        self._key = secret.encode() if isinstance(secret, str) else bytes(secret)

    def __call__(self, person_id: str) -> str:
        digest = hmac.new(self._key, str(person_id).encode(), hashlib.sha256).hexdigest()
        return "psn-" + digest[:16]


def persons_in(alert: dict[str, Any]) -> set[str]:
    """Every raw person id the alert carries (subject and evidence).

    >>> sorted(persons_in({"subject": {"kind": "institution", "id": "H1"}, "evidence": {
    ...     "persons": [{"person_id": "P1", "insured_region": "450100"}, "P2"],
    ...     "top": {"person_ids": ["P3"]}}}))
    ['P1', 'P2', 'P3']
    """
    found: set[str] = set()
    subject = alert.get("subject") or {}
    if subject.get("kind") == "person" and isinstance(subject.get("id"), str):
        found.add(subject["id"])

    def ids(value: Any) -> None:  # a value that *is* person ids
        if isinstance(value, str) and value:
            found.add(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                ids(v) if not isinstance(v, dict) else walk(v, True)
        elif isinstance(value, dict):
            walk(value, True)

    def walk(value: Any, person_record: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in PERSON_ID_KEYS or (person_record and k == "id"):
                    ids(v)
                elif k in PERSON_KEYS:
                    ids(v)
                else:
                    walk(v, False)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, person_record)

    walk(alert.get("evidence"), False)
    return found


def names_in(alert: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in NAME_KEYS and isinstance(v, str) and v.strip():
                    found.add(v)
                else:
                    walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(alert.get("evidence"))
    return found


def _scrub(text: str, replacements: dict[str, str]) -> str:
    # Longest first, so an id that contains another is replaced whole.
    for raw in sorted(replacements, key=len, reverse=True):
        text = text.replace(raw, replacements[raw])
    return text


def notification_view(alert: dict[str, Any], pseudonym: Callable[[str], str]) -> dict[str, Any]:
    """The part of an alert a notification may carry, persons pseudonymised."""
    persons = persons_in(alert)
    replacements = {p: pseudonym(p) for p in persons}
    replacements.update({n: "[name withheld]" for n in names_in(alert)})
    settlements = {s for s in alert.get("settlement_ids") or () if isinstance(s, str) and s}
    subject = dict(alert["subject"])
    if subject["kind"] == "person":
        subject["id"] = pseudonym(subject["id"])
    elif subject["kind"] == "settlement":
        settlements.add(subject["id"])
        subject["id"] = "[id in the alert store]"
    for settlement in settlements - set(replacements):
        replacements[settlement] = "[settlement]"
    figures = {}
    for key, value in (alert.get("evidence") or {}).items():
        if key in PERSON_KEYS or key in NAME_KEYS:
            continue
        if isinstance(value, bool) or isinstance(value, (int, float)):
            figures[key] = value
        elif isinstance(value, str) and value not in replacements and (
                _DECIMAL.match(value) or (key in SAFE_TEXT_KEYS and _SAFE_WORD.match(value))):
            figures[key] = value
    shown = sorted(replacements[p] for p in persons)
    # Where the rule says where a person is insured, each side is shown its own.
    person_region = {}
    for record in (alert.get("evidence") or {}).get("persons") or ():
        if isinstance(record, dict) and record.get("person_id") in replacements:
            person_region[replacements[record["person_id"]]] = record.get("insured_region")
    return {
        "alert_id": alert["alert_id"],
        "rule_id": alert["rule_id"],
        "severity": alert["severity"],
        "subject": subject,
        "regions": list(alert["regions"]),
        "review": alert["review"],
        "duties": {r: _scrub(d, replacements) for r, d in (alert.get("duties") or {}).items()},
        "window": dict(alert["window"]),
        "detected_at": alert["detected_at"],
        "summary": _scrub(alert["summary"], replacements),
        "figures": figures,
        "persons": shown[:MAX_PERSONS_SHOWN],
        "person_count": len(shown),
        "person_regions": person_region,
        "settlement_count": (alert.get("evidence") or {}).get(
            "settlement_count", len(alert.get("settlement_ids") or [])),
    }


def inbox_view(alert: dict[str, Any], pseudonym: Callable[[str], str]) -> dict[str, Any]:
    """The whole alert as the inbox shows it to every role: persons as pseudonyms (the
    same as in notifications, with the same key) wherever they appear — subject,
    summary, duties, evidence — and names withheld; everything else as stored, with
    the settlement ids an auditor pulls.

    >>> p = Pseudonymizer("a-key-of-at-least-16-chars")
    >>> a = {"subject": {"kind": "person", "id": "P7"}, "summary": "P7 twice",
    ...      "duties": {"440900": "check P7"}, "settlement_ids": ["S1"],
    ...      "evidence": {"persons": [{"person_id": "P7", "name": "张三"}], "note": "P7 moved"}}
    >>> v = inbox_view(a, p)
    >>> "P7" in str(v) or "张三" in str(v), v["settlement_ids"], v["subject"]["id"] == p("P7")
    (False, ['S1'], True)
    """
    replacements = {person: pseudonym(person) for person in persons_in(alert)}
    replacements.update({n: "[name withheld]" for n in names_in(alert)})

    def clean(value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {k: ("[name withheld]" if k in NAME_KEYS and isinstance(v, str)
                        else clean(v, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, key) for v in value]
        if isinstance(value, str):
            if value in replacements:
                return replacements[value]
            if key not in ("settlement_ids", "elsewhere_settlement_ids", "alert_id"):
                return _scrub(value, replacements)
        return value

    return clean(alert) if replacements else alert
