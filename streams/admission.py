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
  original as reversed;
* with a :class:`LedgerRetention`, a record whose event day the ledger has forgotten
  (more than ``ledger_retention_days`` behind the watermark) is ``rejected`` as
  ``beyond_retention``: it can no longer be checked, and must not be counted twice.

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
from datetime import date, timedelta
from typing import Any, Literal

from streams.records import Contribution, Reason, Settlement, digest, fen_to_yuan_str
from streams.watermark import event_ms

__all__ = ["ADMISSION_CODES", "Admission", "LedgerRetention", "admit", "event_day",
           "event_day_of_ms", "iso_day", "ledger_key"]

#: The reason codes admit() can emit (all of them are also in records.REASON_CODES).
ADMISSION_CODES = (
    "conflicting_duplicate",
    "reversal_unknown_original",
    "reversal_mismatch",
    "reversal_amounts_mismatch",
    "already_reversed",
    "reversal_of_reversal",
    "beyond_retention",
)

# Ledger values are dicts with short keys (stored once per record, for the retention):
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


#: Asia/Shanghai keeps UTC+8 all year (no daylight saving since 1991): its days are
#: fixed spans of epoch time.
_SHANGHAI_MS = 8 * 3600 * 1000
_DAY_MS = 86_400_000


def event_day(event: Settlement | Contribution) -> int:
    """The Asia/Shanghai calendar day of a record's event time, as days since 1970-01-01.

    >>> from streams.records import from_canonical
    >>> c = from_canonical({"schema": "contribution/v1", "contribution_id": "C9",
    ...     "received_at": "2024-02-29T23:30:00+08:00", "pool_region": "440900",
    ...     "insurance_type": "employee", "amount": "1.00", "source": "employer"})
    >>> iso_day(event_day(c))
    '2024-02-29'
    """
    return event_day_of_ms(event_ms(event))


def event_day_of_ms(ms: int) -> int:
    return (ms + _SHANGHAI_MS) // _DAY_MS


def iso_day(day: int) -> str:
    """A day of :func:`event_day` as an ISO date."""
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


#: Ledger keys of the retention's bookkeeping ("~" starts no record id's key), per
#: ``tag`` (an admission partition live, "offline" in a replay).
FORGOTTEN = "~forgotten/"  # + tag → the first day still remembered
DAYS = "~days/"  # + tag → {day: index chunks written for it}
DAY_INDEX = "~day/"  # + tag/day/n → ledger keys written for that day, a chunk of them
INDEX_CHUNK_KEYS = 1000  # a chunk grows to this many keys (more if one batch wrote more)


class LedgerRetention:
    """The ledger forgets the ids of days more than ``days`` behind the watermark.

    Without it the ledger holds every id ever admitted: a province's worker grows by
    its day's settlements every day, in memory or on disk, and so does the time to
    rebuild it from the changelog. With it, a record of a forgotten day is rejected
    (``beyond_retention``, to the dead-letter topic with its reason) rather than
    admitted unchecked: a re-sent settlement of last year must not be counted twice.

    Which keys a day wrote is kept in the ledger itself, in small index entries
    written with the batch's entries (the same changelog batch: a restarted worker
    recovers the index with what it indexes), so forgetting a day costs what that
    day wrote, never a scan. Entries written before retention existed are in no
    index: they are kept. ``admit`` notes what it writes; ``save`` writes the notes;
    ``expire`` saves, then forgets the days the watermark has left behind.

    >>> from datetime import datetime
    >>> from streams.records import from_canonical
    >>> from streams.watermark import to_ms
    >>> def contribution(n, day):
    ...     return from_canonical({"schema": "contribution/v1", "contribution_id": f"C{n}",
    ...         "received_at": f"2024-03-{day:02d}T10:00:00+08:00", "pool_region": "440900",
    ...         "insurance_type": "employee", "amount": "1.00", "source": "employer"})
    >>> ledger, keep = {}, LedgerRetention(days=2, tag="offline")
    >>> [admit(contribution(n, n), ledger, retention=keep).outcome for n in (1, 2, 3, 4)]
    ['accepted', 'accepted', 'accepted', 'accepted']
    >>> watermark = to_ms(datetime.fromisoformat("2024-03-04T12:00:00+08:00"))
    >>> keep.expire(ledger, watermark)     # 2 days behind 4 March: 1 March goes
    1
    >>> sorted(k for k in ledger if not k.startswith("~"))
    ['c:C2', 'c:C3', 'c:C4']
    >>> late = admit(contribution(1, 1), ledger, retention=keep)
    >>> late.outcome, late.reasons[0].code
    ('rejected', 'beyond_retention')
    >>> admit(contribution(2, 2), ledger, retention=keep).outcome   # still known
    'duplicate'

    With a budget, the forgetting goes on over several calls, an index chunk (here a
    day's) at a time:

    >>> [admit(contribution(n, 5), ledger, retention=keep).outcome for n in (5, 6)]
    ['accepted', 'accepted']
    >>> keep.save(ledger)
    >>> admit(contribution(7, 5), ledger, retention=keep).outcome
    'accepted'
    >>> keep.save(ledger)                  # into the same chunk as C5 and C6
    >>> ledger[f"~day/offline/{event_day(contribution(7, 5))}/0"]
    ['c:C5', 'c:C6', 'c:C7']
    >>> later = to_ms(datetime.fromisoformat("2024-03-09T12:00:00+08:00"))
    >>> [keep.expire(ledger, later, budget=1) for _ in range(5)]   # 2, 3, 4, 5 March
    [1, 1, 1, 3, 0]
    >>> sorted(k for k in ledger if not k.startswith("~"))
    []
    """

    def __init__(self, days: int, tag: str) -> None:
        if days < 1:
            raise ValueError("a retention keeps at least one day")
        self.days = days
        self.tag = tag
        #: The day of the record being admitted (set by admit before it writes).
        self.pending_day: int | None = None
        self._noted: dict[int, list[str]] = {}

    def forgotten_before(self, ledger: MutableMapping[str, Any]) -> int | None:
        """The first day the ledger still remembers (None: it has forgotten none)."""
        return ledger.get(FORGOTTEN + self.tag)

    def note(self, key: str) -> None:
        """``key`` was written for a record of ``pending_day``."""
        self._noted.setdefault(self.pending_day, []).append(key)  # type: ignore[arg-type]

    def save(self, ledger: MutableMapping[str, Any]) -> None:
        """Write the keys noted since the last save into the day index."""
        if self._noted:
            ledger[DAYS + self.tag] = self._write_chunks(ledger)

    def _write_chunks(self, ledger: MutableMapping[str, Any]) -> dict[str, int]:
        """Write the noted keys' index chunks; return the directory that counts them
        (not written)."""
        directory = dict(ledger.get(DAYS + self.tag) or {})
        for day, keys in self._noted.items():
            n = directory.get(str(day), 0)
            if n:
                # A quiet stream's batches hold a record or two: an index entry of
                # their own each would double the ledger. Fill the day's last one.
                last = ledger.get(f"{DAY_INDEX}{self.tag}/{day}/{n - 1}") or []
                if len(last) + len(keys) <= INDEX_CHUNK_KEYS:
                    ledger[f"{DAY_INDEX}{self.tag}/{day}/{n - 1}"] = last + keys
                    continue
            ledger[f"{DAY_INDEX}{self.tag}/{day}/{n}"] = keys
            directory[str(day)] = n + 1
        self._noted = {}
        return directory

    def expire(self, ledger: MutableMapping[str, Any], watermark_ms: int,
               budget: int | None = None) -> int:
        """Save the notes, then forget every day more than ``days`` before the
        watermark's day. Returns the number of ledger entries forgotten.

        ``budget``: stop once about that many are forgotten (whole index chunks);
        the next call goes on. Live, a province's day is millions of ids: forgotten
        in one batch, its tombstones would hold the admission stage for seconds.

        The writes come in the order a changelog keeps them (a batch too large for
        one record batch can be cut short by a crash): the first day remembered,
        then the tombstones, then the directory that no longer lists them. A prefix
        may leave entries of a forgotten day in the ledger (never admitted again:
        their day is before the first remembered), never a listed chunk unwritten."""
        changed = bool(self._noted)
        directory = self._write_chunks(ledger)
        horizon = event_day_of_ms(watermark_ms) - self.days
        known = self.forgotten_before(ledger)
        if known is not None and horizon <= known:
            horizon = known  # the watermark never goes back; a restart may re-run this
        elif known != horizon:
            # Before any entry goes: from here on no record of those days is admitted.
            ledger[FORGOTTEN + self.tag] = horizon
        forgotten = 0
        for day in [day for day in directory if int(day) < horizon]:
            # The day's chunks from the last: what is left of a day cut short by the
            # budget is its chunks 0 .. directory[day] - 1.
            while directory[day] and (budget is None or forgotten < budget):
                directory[day] -= 1
                chunk = f"{DAY_INDEX}{self.tag}/{day}/{directory[day]}"
                for key in ledger.get(chunk) or ():
                    forgotten += ledger.pop(key, None) is not None
                ledger.pop(chunk, None)
                changed = True
            if directory[day]:
                break
            del directory[day]
        if changed:
            ledger[DAYS + self.tag] = directory
        return forgotten


def admit(event: Settlement | Contribution, ledger: MutableMapping[str, Any],
          source: str | None = None, position: tuple | None = None,
          canonical: dict[str, Any] | None = None,
          retention: LedgerRetention | None = None) -> Admission:
    """Decide whether ``event`` enters the pipeline, recording it in ``ledger`` if so.

    ``source`` identifies where this copy came from, e.g. ``"topic:partition:offset"``;
    give it on the live path so a redelivery after a crash is told apart from a
    producer re-sending the record. Offline tools may leave it out. ``canonical``:
    the event's ``to_canonical`` form if the caller has it (saves building it again
    for the content digest). ``retention``: the ledger forgets old days (see
    :class:`LedgerRetention`); the entries this call writes are noted in it.

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
    forgotten = None
    if retention is not None:
        day = event_day(event)
        retention.pending_day = day
        forgotten = retention.forgotten_before(ledger)
        if forgotten is not None and day < forgotten:
            return _decided(ledger, source, Admission("rejected", (Reason(
                "beyond_retention",
                f"{event.kind} {event.record_id!r} is from {iso_day(day)}, but the ledger "
                f"keeps ids for {retention.days} days behind the watermark and has "
                f"forgotten the days before {iso_day(forgotten)}: it cannot be checked for "
                "duplicates or reversals. Review it by hand (or replay the period with a "
                "longer retention)"),)), retention)
    content = digest(event, canonical)
    seen = ledger.get(key)
    if seen is not None:
        if seen["d"] != content:
            return _decided(ledger, source, Admission("rejected", (Reason(
                "conflicting_duplicate",
                f"{event.kind} id {event.record_id!r} was already received with different "
                "content; the first version is kept. Send a correction as a reversal "
                "(reverses) plus a new settlement with a new id, not under the same id",
            ),)), retention)
        if source is not None and seen.get("s") == source:
            first = seen.get("ap")
            return Admission("accepted", redelivery=True,
                             position=tuple(first) if first is not None else position)
        return _decided(ledger, source, _DUPLICATE, retention)

    entry: dict[str, Any] = {"d": content}
    if source is not None:
        entry["s"] = source
    if position is not None:
        entry["ap"] = list(position)
    accepted = Admission("accepted", position=position) if position is not None else _ACCEPTED
    if isinstance(event, Contribution):
        ledger[key] = entry
        if retention is not None:
            retention.note(key)
        return accepted

    entry["t"] = event.total_cost_fen
    entry["f"] = event.fund_paid_fen
    entry["p"] = event.personal_paid_fen
    entry["pid"] = event.person_id
    entry["pool"] = event.pool_key
    entry["inst"] = event.institution_id
    if event.reverses is not None:
        reasons = _check_reversal(event, ledger, forgotten)
        if reasons:
            return _decided(ledger, source, Admission("rejected", reasons), retention)
        entry["r"] = event.reverses
        original_key = "s:" + event.reverses
        # Mark the original first: if the worker dies between the two writes, the
        # redelivered reversal finds the mark carrying its own id and passes again,
        # whereas the other order could let a second reversal through.
        ledger[original_key] = {**ledger[original_key], "rb": event.settlement_id}
    ledger[key] = entry
    if retention is not None:
        retention.note(key)  # (the original's mark is forgotten with the original)
    return accepted


#: Ledger keys of broker positions whose record was not accepted (a duplicate or a
#: rejection); accepted records carry their position in their own entry ("s").
_SOURCE_PREFIX = "src:"


def _decided(ledger: MutableMapping[str, Any], source: str | None,
             admission: Admission, retention: LedgerRetention | None = None) -> Admission:
    """Remember a non-accepted decision by broker position; return it."""
    if source is not None:
        ledger[_SOURCE_PREFIX + source] = {
            "o": admission.outcome,
            "r": [[r.code, r.message] for r in admission.reasons]}
        if retention is not None:
            retention.note(_SOURCE_PREFIX + source)
    return admission


def _replayed(decided: dict[str, Any]) -> Admission:
    return Admission(decided["o"], tuple(Reason(c, m) for c, m in decided["r"]),
                     redelivery=True)


def _check_reversal(event: Settlement, ledger: MutableMapping[str, Any],
                    forgotten: int | None = None) -> tuple[Reason, ...]:
    rid, oid = event.settlement_id, event.reverses
    original = ledger.get("s:" + oid)  # type: ignore[operator]
    if original is None:
        # (A reversal carries no date of its original: an original older than the
        # ledger remembers cannot be told apart from one never sent.)
        older = "" if forgotten is None else (
            f", or it is from before {iso_day(forgotten)}, which the ledger has forgotten "
            "(review such a reversal by hand)")
        return (Reason("reversal_unknown_original", f"settlement {rid!r} reverses {oid!r}, but "
                       f"no settlement {oid!r} was accepted before; send the original first, "
                       f"or check the id in reverses{older}"),)
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
