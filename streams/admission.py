"""Admission: the checks that need memory of earlier records.

:func:`admit` decides whether a parsed event enters the pipeline, using a ledger of
what was admitted before. The same function serves both drivers: the live worker
passes a Faust table (changelog-backed, JSON-serialised), offline tools a dict. So the
ledger holds only small JSON values, and every change is written back by assignment
(``ledger[key] = value``), because a Faust table persists a change only on assignment.

Rules, in order:

* an id seen before with the same content (digest) is a ``duplicate`` and changes
  nothing, unless it comes from the same broker position (``source``) as the first
  copy: that is a redelivery after a crash, ``accepted`` with ``redelivery=True``
  (downstream state is idempotent, and the first pass may not have reached it);
* an id seen before with other content is ``rejected`` as ``conflicting_duplicate``;
  the ledger keeps the first content;
* a reversal (``reverses`` set) must name an accepted settlement that is not itself a
  reversal, is not reversed yet, belongs to the same person, insured pool and
  institution, and carries exactly the negated amounts. Accepting it marks the
  original as reversed.

>>> from streams.records import parse
>>> ledger = {}
>>> c = parse(b'{"schema":"contribution/v1","contribution_id":"C1","amount":"10.00",'
...           b'"received_at":"2024-03-01T00:00:00Z","pool_region":"440900",'
...           b'"insurance_type":"employee","source":"employer"}')
>>> admit(c, ledger, source="fundwatch.contributions:0:17").outcome
'accepted'
>>> admit(c, ledger).outcome
'duplicate'
>>> admit(c, ledger, source="fundwatch.contributions:0:17").redelivery
True
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from streams.records import Contribution, Reason, Settlement, digest, fen_to_yuan_str

__all__ = ["ADMISSION_CODES", "Admission", "admit", "ledger_key"]

#: The reason codes admit() can emit (all of them are also in records.REASON_CODES).
ADMISSION_CODES = (
    "conflicting_duplicate",
    "reversal_unknown_original",
    "reversal_mismatch",
    "reversal_amounts_mismatch",
    "already_reversed",
    "reversal_of_reversal",
)

# Ledger values are dicts with short keys (they are stored once per record, forever):
#   d  digest of the first accepted content       (always)
#   s  source (broker position) of that copy      (when given)
# settlements only:
#   t, f, p  total_cost, fund_paid, personal_paid in fen
#   pid      person_id;  pool  insured pool key;  inst  institution_id
#   r        the id this settlement reverses      (reversals only)
#   rb       the id of the reversal that reversed this settlement (once reversed)


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of :func:`admit`; ``reasons`` is non-empty exactly when rejected."""

    outcome: Literal["accepted", "duplicate", "rejected"]
    reasons: tuple[Reason, ...] = ()
    #: The same broker position was decided before (a redelivery after a crash):
    #: the decision is repeated, but the record must not be counted again.
    redelivery: bool = False
    #: For an accepted record: the stream position of its first acceptance (as given
    #: to :func:`admit`). Downstream stages apply each position once, so a redelivered
    #: record must travel under its first position, not a new one.
    position: tuple | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"


# Shared instances for the outcomes without reasons (Admission is immutable).
_ACCEPTED = Admission("accepted")
_REDELIVERED = Admission("accepted", redelivery=True)
_DUPLICATE = Admission("duplicate")


def ledger_key(event: Settlement | Contribution) -> str:
    """The ledger key of an event: ``"s:<settlement_id>"`` or ``"c:<contribution_id>"``.

    >>> from streams.records import from_canonical
    >>> ledger_key(from_canonical({"schema": "contribution/v1", "contribution_id": "C9",
    ...     "received_at": "2024-03-01T00:00:00Z", "pool_region": "440900",
    ...     "insurance_type": "employee", "amount": "1.00", "source": "employer"}))
    'c:C9'
    """
    if isinstance(event, Settlement):
        return "s:" + event.settlement_id
    return "c:" + event.contribution_id


def admit(event: Settlement | Contribution, ledger: MutableMapping[str, Any],
          source: str | None = None, position: tuple | None = None,
          canonical: dict[str, Any] | None = None) -> Admission:
    """Decide whether ``event`` enters the pipeline, recording it in ``ledger`` if so.

    ``source`` identifies where this copy came from, e.g. ``"topic:partition:offset"``;
    give it on the live path so a redelivery after a crash is told apart from a
    producer re-sending the record. Offline tools may leave it out. ``canonical``:
    the event's ``to_canonical`` form if the caller has it (saves building it again
    for the content digest).

    The original of a reversal is looked up in the same ledger, so on the live path a
    reversal must be processed in the partition that holds its original (route
    settlements by ``reverses or settlement_id``, or by ``person_id``).

    >>> from streams.records import parse
    >>> rec = (b'{"schema":"settlement/v1","settlement_id":"%s","reverses":%s,'
    ...        b'"settled_at":"2024-03-01T10:00:00+08:00","person_id":"P1","sex":"F",'
    ...        b'"age":70,"insurance_type":"resident","insured_region":"440900",'
    ...        b'"treatment_region":"440900","institution_id":"H1",'
    ...        b'"institution_type":"hospital","institution_level":2,'
    ...        b'"visit_type":"outpatient","diagnoses":["J06.9"],"filing":"none",'
    ...        b'"total_cost":"%s","fund_paid":"%s","personal_paid":"%s"}')
    >>> ledger = {}
    >>> admit(parse(rec % (b"S1", b"null", b"100.00", b"60.00", b"40.00")), ledger).outcome
    'accepted'
    >>> bad = admit(parse(rec % (b"S2", b'"S1"', b"-100.00", b"-70.00", b"-30.00")), ledger)
    >>> bad.outcome, [r.code for r in bad.reasons]
    ('rejected', ['reversal_amounts_mismatch'])
    >>> admit(parse(rec % (b"S3", b'"S1"', b"-100.00", b"-60.00", b"-40.00")), ledger).outcome
    'accepted'
    >>> ledger["s:S1"]["rb"]
    'S3'
    """
    if isinstance(event, Settlement):
        key = "s:" + event.settlement_id
    else:
        key = "c:" + event.contribution_id
    # A copy from a broker position already decided (the worker died before its
    # offset was committed) gets the same decision again, flagged as a redelivery so
    # that it is not counted twice; its dead letter may be re-sent (consumers of the
    # dead-letter topic dedupe by source position).
    if source is not None:
        decided = ledger.get(_SOURCE_PREFIX + source)
        if decided is not None:
            return _replayed(decided)
    content = digest(event, canonical)
    seen = ledger.get(key)
    if seen is not None:
        if seen["d"] != content:
            return _decided(ledger, source, Admission("rejected", (Reason(
                "conflicting_duplicate",
                f"{event.kind} id {event.record_id!r} was already received with different "
                "content; the first version is kept. Send a correction as a reversal "
                "(reverses) plus a new settlement with a new id, not under the same id",
            ),)))
        if source is not None and seen.get("s") == source:
            first = seen.get("ap")
            return Admission("accepted", redelivery=True,
                             position=tuple(first) if first is not None else position)
        return _decided(ledger, source, _DUPLICATE)

    entry: dict[str, Any] = {"d": content}
    if source is not None:
        entry["s"] = source
    if position is not None:
        entry["ap"] = list(position)
    accepted = Admission("accepted", position=position) if position is not None else _ACCEPTED
    if isinstance(event, Contribution):
        ledger[key] = entry
        return accepted

    entry["t"] = event.total_cost_fen
    entry["f"] = event.fund_paid_fen
    entry["p"] = event.personal_paid_fen
    entry["pid"] = event.person_id
    entry["pool"] = event.pool_key
    entry["inst"] = event.institution_id
    if event.reverses is not None:
        reasons = _check_reversal(event, ledger)
        if reasons:
            return _decided(ledger, source, Admission("rejected", reasons))
        entry["r"] = event.reverses
        original_key = "s:" + event.reverses
        # Mark the original first: if the worker dies between the two writes, the
        # redelivered reversal finds the mark carrying its own id and passes again,
        # whereas the other order could let a second reversal through.
        ledger[original_key] = {**ledger[original_key], "rb": event.settlement_id}
    ledger[key] = entry
    return accepted


#: Ledger keys of broker positions whose record was not accepted (a duplicate or a
#: rejection); accepted records carry their position in their own entry ("s").
_SOURCE_PREFIX = "src:"


def _decided(ledger: MutableMapping[str, Any], source: str | None,
             admission: Admission) -> Admission:
    """Remember a non-accepted decision by broker position; return it."""
    if source is not None:
        ledger[_SOURCE_PREFIX + source] = {
            "o": admission.outcome,
            "r": [[r.code, r.message] for r in admission.reasons]}
    return admission


def _replayed(decided: dict[str, Any]) -> Admission:
    return Admission(decided["o"], tuple(Reason(c, m) for c, m in decided["r"]),
                     redelivery=True)


def _check_reversal(event: Settlement, ledger: MutableMapping[str, Any]) -> tuple[Reason, ...]:
    rid, oid = event.settlement_id, event.reverses
    original = ledger.get("s:" + oid)  # type: ignore[operator]
    if original is None:
        return (Reason("reversal_unknown_original", f"settlement {rid!r} reverses {oid!r}, but "
                       f"no settlement {oid!r} was accepted before; send the original first, "
                       "or check the id in reverses"),)
    if "r" in original:
        return (Reason("reversal_of_reversal", f"settlement {rid!r} reverses {oid!r}, which is "
                       f"itself a reversal (of {original['r']!r}); to restore a reversed "
                       "settlement, send it again as a new settlement with a new id"),)
    reasons = []
    differ = [name for name, mine, theirs in (
        ("person_id", event.person_id, original["pid"]),
        ("insured pool (insured_region:insurance_type)", event.pool_key, original["pool"]),
        ("institution_id", event.institution_id, original["inst"]),
    ) if mine != theirs]
    if differ:
        reasons.append(Reason("reversal_mismatch", f"settlement {rid!r} reverses {oid!r}, but "
                              f"its {', '.join(differ)} differ{'s' if len(differ) == 1 else ''}"
                              " from the original's; a reversal must name the same person, "
                              "pool and institution"))
    expected = (-original["t"], -original["f"], -original["p"])
    got = (event.total_cost_fen, event.fund_paid_fen, event.personal_paid_fen)
    if got != expected:
        want = ", ".join(f"{n} {fen_to_yuan_str(x)}" for n, x in
                         zip(("total_cost", "fund_paid", "personal_paid"), expected))
        have = ", ".join(fen_to_yuan_str(x) for x in got)
        reasons.append(Reason("reversal_amounts_mismatch", f"settlement {rid!r} reverses "
                              f"{oid!r}, so its amounts must be the negated originals "
                              f"({want}); got {have}"))
    reversed_by = original.get("rb")
    if reversed_by is not None and reversed_by != rid:
        reasons.append(Reason("already_reversed", f"settlement {rid!r} reverses {oid!r}, which "
                              f"was already reversed by {reversed_by!r}; a settlement can be "
                              "reversed only once"))
    return tuple(reasons)
