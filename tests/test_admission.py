"""Admission: duplicates, redeliveries, conflicting duplicates and reversals."""

from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from streams.admission import ADMISSION_CODES, Admission, admit, ledger_key
from streams.changelog import EncodedValues
from streams.records import REASON_CODES, parse
from tests.factories import contribution, dumps, reversal_of, settlement


class JsonTable(EncodedValues):
    """A worker's ledger without a worker (``EncodedValues``: each value kept as its
    JSON), so a change made in place on a value read from it is lost, as a Faust
    table persists a change only when the key is assigned; remembers the order of
    the writes."""

    def __init__(self) -> None:
        super().__init__({})
        self.writes: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)  # fails on anything not JSON-able
        self.writes.append(key)


@pytest.fixture(params=["dict", "json-table"])
def ledger(request) -> MutableMapping[str, Any]:
    return {} if request.param == "dict" else JsonTable()


def ev(record: dict):
    return parse(dumps(record))


def codes(adm: Admission) -> list[str]:
    return [r.code for r in adm.reasons]


def snapshot(ledger: MutableMapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(ledger.items()))


# --------------------------------------------------------------------------- duplicates


def test_first_time_accepted_then_duplicate_changes_nothing(ledger):
    s = ev(settlement(settlement_id="S1"))
    first = admit(s, ledger)
    assert first == Admission("accepted") and first.accepted and not first.redelivery
    before = snapshot(ledger)
    again = admit(s, ledger)
    assert again.outcome == "duplicate" and again.reasons == () and not again.accepted
    assert snapshot(ledger) == before


def test_same_content_in_another_form_is_a_duplicate(ledger):
    rec = settlement(settlement_id="S1")
    assert admit(ev(rec), ledger).outcome == "accepted"
    reordered = dict(reversed(list(rec.items())))
    reordered["settled_at"] = "2025-03-10T01:30:00Z"  # the same instant
    reordered["total_cost"] = 12345.6
    assert admit(ev(reordered), ledger).outcome == "duplicate"


def test_redelivery_from_the_same_source_is_accepted_again(ledger):
    s = ev(settlement(settlement_id="S1"))
    assert admit(s, ledger, source="fundwatch.settlements:3:1041").outcome == "accepted"
    again = admit(s, ledger, source="fundwatch.settlements:3:1041")
    assert again.outcome == "accepted" and again.redelivery
    # a producer re-sending it lands at another position: a plain duplicate
    assert admit(s, ledger, source="fundwatch.settlements:3:2000").outcome == "duplicate"
    assert admit(s, ledger).outcome == "duplicate"


def test_without_source_a_repeat_is_always_a_duplicate(ledger):
    c = ev(contribution(contribution_id="C1"))
    assert admit(c, ledger).outcome == "accepted"
    assert admit(c, ledger).outcome == "duplicate"
    assert admit(c, ledger, source="x:0:1").outcome == "duplicate"


def test_conflicting_duplicate_is_rejected_and_first_content_kept(ledger):
    rec = settlement(settlement_id="S1")
    assert admit(ev(rec), ledger).outcome == "accepted"
    before = snapshot(ledger)
    changed = ev({**rec, "personal_paid": "2469.11", "fund_paid": "9876.49"})
    result = admit(changed, ledger, source="t:0:9")
    assert result.outcome == "rejected" and codes(result) == ["conflicting_duplicate"]
    assert "'S1'" in result.reasons[0].message
    # The first content's entry is untouched; only the decision on position t:0:9 is
    # remembered, so that a redelivery of it is not counted twice.
    after = snapshot(ledger)
    assert {k: v for k, v in after.items() if not k.startswith("src:")} == before
    assert set(after) - set(before) == {"src:t:0:9"}
    # the first content is still the one that counts
    assert admit(ev(rec), ledger).outcome == "duplicate"
    assert codes(admit(changed, ledger)) == ["conflicting_duplicate"]


def test_conflicting_contribution(ledger):
    assert admit(ev(contribution(contribution_id="C1")), ledger).accepted
    result = admit(ev(contribution(contribution_id="C1", amount="1.00")), ledger)
    assert codes(result) == ["conflicting_duplicate"]


def test_settlement_and_contribution_ids_do_not_collide(ledger):
    s, c = ev(settlement(settlement_id="X")), ev(contribution(contribution_id="X"))
    assert admit(s, ledger).accepted and admit(c, ledger).accepted
    assert ledger_key(s) == "s:X" and ledger_key(c) == "c:X"
    assert set(ledger) == {"s:X", "c:X"}


def test_ledger_values_are_small_json(ledger):
    original = settlement(settlement_id="S1")
    admit(ev(original), ledger, source="t:1:2")
    admit(ev(reversal_of(original, settlement_id="S1-R")), ledger, source="t:1:3")
    admit(ev(contribution(contribution_id="C1")), ledger)
    for key in ledger:
        value = ledger[key]
        assert orjson.loads(orjson.dumps(value)) == value
        assert len(orjson.dumps(value)) < 200
    assert ledger["s:S1"]["rb"] == "S1-R" and ledger["s:S1-R"]["r"] == "S1"


# --------------------------------------------------------------------------- reversals


@pytest.fixture
def original(ledger) -> dict:
    rec = settlement(settlement_id="S1", person_id="P1", insured_region="440900",
                     treatment_region="440100", filing="long_term")
    assert admit(ev(rec), ledger, source="t:0:1").accepted
    return rec


def test_valid_reversal_marks_the_original(ledger, original):
    result = admit(ev(reversal_of(original, settlement_id="S1-R")), ledger, source="t:0:2")
    assert result == Admission("accepted")
    assert ledger["s:S1"]["rb"] == "S1-R"
    assert ledger["s:S1-R"]["r"] == "S1"
    if isinstance(ledger, JsonTable):  # the mark was written back by assignment, first
        assert ledger.writes[-2:] == ["s:S1", "s:S1-R"]


def test_reversal_of_unknown_original(ledger):
    orphan = reversal_of(settlement(settlement_id="NEVER-SEEN"), settlement_id="R1")
    result = admit(ev(orphan), ledger)
    assert result.outcome == "rejected" and codes(result) == ["reversal_unknown_original"]
    assert "'NEVER-SEEN'" in result.reasons[0].message
    assert "s:R1" not in ledger


@pytest.mark.parametrize("field, value", [
    ("person_id", "P2"),
    ("insured_region", "440100"),
    ("insurance_type", "employee"),
    ("institution_id", "H440100002"),
])
def test_reversal_for_another_person_pool_or_institution(ledger, original, field, value):
    result = admit(ev(reversal_of(original, **{field: value})), ledger)
    assert codes(result) == ["reversal_mismatch"]
    assert "rb" not in ledger["s:S1"]


@pytest.mark.parametrize("amounts", [
    {"total_cost": "-12345.59", "personal_paid": "-2469.11"},   # one fen less, still adds up
    {"fund_paid": "-9876.47", "personal_paid": "-2469.13"},     # split differently
    {"total_cost": "0.00", "fund_paid": "0.00", "personal_paid": "0.00"},
])
def test_reversal_amounts_must_be_the_negated_originals(ledger, original, amounts):
    reversal = {k: v for k, v in reversal_of(original, **amounts).items() if k != "items"}
    result = admit(ev(reversal), ledger)
    assert codes(result) == ["reversal_amounts_mismatch"]
    assert "total_cost -12345.60" in result.reasons[0].message  # what was expected
    assert "rb" not in ledger["s:S1"]


def test_already_reversed(ledger, original):
    assert admit(ev(reversal_of(original, settlement_id="S1-R1")), ledger).accepted
    result = admit(ev(reversal_of(original, settlement_id="S1-R2")), ledger)
    assert codes(result) == ["already_reversed"]
    assert "'S1-R1'" in result.reasons[0].message
    assert ledger["s:S1"]["rb"] == "S1-R1" and "s:S1-R2" not in ledger


def test_reversal_of_a_reversal(ledger, original):
    first = reversal_of(original, settlement_id="S1-R")
    assert admit(ev(first), ledger).accepted
    undo = {**reversal_of(first, settlement_id="S1-R-R")}
    # amounts of a reversal of a reversal would be positive, which parse() already
    # refuses; so the case reaching admit() names a reversal with non-positive amounts
    undo.update({k: first[k] for k in ("total_cost", "fund_paid", "personal_paid", "items")})
    result = admit(ev(undo), ledger)
    assert codes(result) == ["reversal_of_reversal"]


def test_several_reversal_problems_are_reported_together(ledger, original):
    assert admit(ev(reversal_of(original, settlement_id="S1-R1")), ledger).accepted
    bad = {k: v for k, v in reversal_of(original, settlement_id="S1-R2", person_id="P9",
                                        total_cost="-1.00", fund_paid="-1.00",
                                        personal_paid="0.00").items() if k != "items"}
    assert codes(admit(ev(bad), ledger)) == [
        "reversal_mismatch", "reversal_amounts_mismatch", "already_reversed"]


def test_redelivered_reversal(ledger, original):
    r = ev(reversal_of(original, settlement_id="S1-R"))
    assert admit(r, ledger, source="t:0:2").accepted
    again = admit(r, ledger, source="t:0:2")
    assert again.outcome == "accepted" and again.redelivery
    assert admit(r, ledger, source="t:0:99").outcome == "duplicate"
    assert ledger["s:S1"]["rb"] == "S1-R"


def test_crash_between_the_two_writes_of_a_reversal(ledger, original):
    # The worker marked the original and died before recording the reversal itself:
    # the redelivered reversal must pass again (and only it).
    ledger["s:S1"] = {**ledger["s:S1"], "rb": "S1-R"}
    assert admit(ev(reversal_of(original, settlement_id="S1-R")), ledger, "t:0:2").accepted
    assert codes(admit(ev(reversal_of(original, settlement_id="S1-X")), ledger)) == [
        "already_reversed"]


def test_zero_amount_settlement_can_be_reversed(ledger):
    rec = settlement(settlement_id="Z1", total_cost="0.00", fund_paid="0.00",
                     personal_paid="0.00")
    assert admit(ev(rec), ledger).accepted
    assert admit(ev(reversal_of(rec, settlement_id="Z1-R")), ledger).accepted


def test_rejections_do_not_write(ledger, original):
    before = snapshot(ledger)
    admit(ev(reversal_of(original, person_id="P2")), ledger)
    admit(ev(reversal_of(settlement(settlement_id="GHOST"))), ledger)
    admit(ev({**original, "age": 1}), ledger)
    assert snapshot(ledger) == before


def test_admission_codes_are_registered():
    assert set(ADMISSION_CODES) <= set(REASON_CODES)


def test_redelivered_duplicate_and_rejection_are_decided_once():
    """After a crash a worker re-reads records whose offsets were not committed: a
    duplicate or a rejected record from the same broker position gets the same
    decision again, flagged as a redelivery so that it is not counted twice."""
    from streams.admission import admit
    from streams.records import parse

    ledger: dict = {}
    original = settlement(settlement_id="RD-1")
    assert admit(parse(dumps(original)), ledger, source="t/0/1").outcome == "accepted"

    dup = admit(parse(dumps(original)), ledger, source="t/0/2")
    assert (dup.outcome, dup.redelivery) == ("duplicate", False)
    again = admit(parse(dumps(original)), ledger, source="t/0/2")
    assert (again.outcome, again.redelivery) == ("duplicate", True)

    changed = {**original, "diagnoses": ["I21.9"]}
    conflict = admit(parse(dumps(changed)), ledger, source="t/0/3")
    assert (conflict.outcome, conflict.redelivery) == ("rejected", False)
    replayed = admit(parse(dumps(changed)), ledger, source="t/0/3")
    assert (replayed.outcome, replayed.redelivery) == ("rejected", True)
    assert replayed.reasons == conflict.reasons      # the dead letter can be re-sent as is

    orphan = reversal_of(settlement(settlement_id="NEVER-SEEN"), settlement_id="RD-R")
    first = admit(parse(dumps(orphan)), ledger, source="t/0/4")
    assert [r.code for r in first.reasons] == ["reversal_unknown_original"]
    assert admit(parse(dumps(orphan)), ledger, source="t/0/4").redelivery

    # A new copy from a new position is still a new duplicate.
    assert not admit(parse(dumps(original)), ledger, source="t/0/9").redelivery


def test_a_redelivered_record_keeps_its_first_position():
    """Downstream stages apply each position once; a record re-read after a crash
    travels again, so it must carry the position of its first acceptance."""
    from streams.admission import admit
    from streams.records import parse

    ledger: dict = {}
    record = parse(dumps(settlement(settlement_id="POS-1")))
    first = admit(record, ledger, source="in/0/7", position=(2, 40))
    assert first.position == (2, 40) and not first.redelivery
    again = admit(record, ledger, source="in/0/7", position=(2, 95))   # new admit offset
    assert again.redelivery and again.position == (2, 40)


# ----------------------------------------------------------------------- retention


def on_day(day: int, **overrides) -> dict:
    """A settlement of March 2025, day ``day``."""
    return settlement(settled_at=f"2025-03-{day:02d}T10:00:00+08:00", **overrides)


def watermark_on(day: int) -> int:
    from datetime import datetime

    from streams.watermark import to_ms
    return to_ms(datetime.fromisoformat(f"2025-03-{day:02d}T12:00:00+08:00"))


def test_retention_forgets_the_days_behind_the_watermark_and_rejects_them(ledger):
    from streams.admission import LedgerRetention

    keep = LedgerRetention(days=3, tag="0")
    sent = {(day, n): on_day(day, settlement_id=f"R{day}-{n}")
            for day in range(1, 11) for n in range(2)}
    for (day, n), record in sent.items():
        assert admit(ev(record), ledger, source=f"t/0/{day}{n}", retention=keep).accepted
    # A re-sent copy on day 2 (decided by broker position: an "src:" entry, forgotten too).
    assert admit(ev(sent[2, 0]), ledger, source="t/0/99",
                 retention=keep).outcome == "duplicate"
    keep.save(ledger)
    assert "src:t/0/99" in ledger

    assert keep.expire(ledger, watermark_on(10)) == 6 * 2 + 1     # 1–6 March, and the copy
    ids = {key for key in ledger if key.startswith("s:")}
    assert ids == {f"s:R{day}-{n}" for day in range(7, 11) for n in range(2)}
    assert not any(key.startswith("src:t/0/99") for key in ledger)
    assert sorted(ledger["~days/0"]) == [str(d) for d in sorted(
        keep.forgotten_before(ledger) + i for i in range(4))]       # 7–10 March indexed
    # (20147 + d: d March 2025 in days since 1970-01-01)
    assert not any(key.startswith("~day/0/") and int(key.split("/")[2]) < 20147 + 7
                   for key in ledger)
    assert keep.expire(ledger, watermark_on(10)) == 0               # again: nothing

    late = admit(ev(sent[5, 0]), ledger, retention=keep)
    assert codes(late) == ["beyond_retention"]
    assert "2025-03-05" in late.reasons[0].message and "2025-03-07" in late.reasons[0].message
    # A day still remembered: duplicates and conflicts are caught as before.
    assert admit(ev(sent[7, 0]), ledger, retention=keep).outcome == "duplicate"
    assert codes(admit(ev({**sent[7, 1], "age": 33}), ledger,
                       retention=keep)) == ["conflicting_duplicate"]
    # A reversal carries no date of its original: the message says it may be forgotten.
    orphan = admit(ev(reversal_of(sent[3, 0], settlement_id="R3-0-R",
                                  settled_at="2025-03-10T11:00:00+08:00")), ledger,
                   retention=keep)
    assert codes(orphan) == ["reversal_unknown_original"]
    assert "forgotten" in orphan.reasons[0].message


def test_a_reversal_within_retention_still_finds_its_original(ledger):
    from streams.admission import LedgerRetention

    keep = LedgerRetention(days=3, tag="0")
    original = on_day(5, settlement_id="ORIG")
    assert admit(ev(original), ledger, retention=keep).accepted
    keep.expire(ledger, watermark_on(7))
    reversal = reversal_of(original, settlement_id="ORIG-R",
                           settled_at="2025-03-08T09:00:00+08:00")
    assert admit(ev(reversal), ledger, retention=keep).accepted
    keep.expire(ledger, watermark_on(8))
    assert ledger["s:ORIG"]["rb"] == "ORIG-R"
    # The original's day goes first; the reversal's entry stays until its own day goes.
    keep.expire(ledger, watermark_on(9))
    assert "s:ORIG" not in ledger and "s:ORIG-R" in ledger
    keep.expire(ledger, watermark_on(12))
    assert "s:ORIG-R" not in ledger


def test_retention_through_a_batch_overlay_deletes_by_tombstone():
    """Live, admission writes through an overlay whose changes go to the changelog:
    a forgotten entry must be a deletion there (a tombstone), not a value."""
    from streams.admission import LedgerRetention
    from streams.changelog import StateOverlay

    table = JsonTable()
    keep = LedgerRetention(days=1, tag="2")
    for day in (1, 2, 3):
        admit(ev(on_day(day, settlement_id=f"T{day}")), table, retention=keep)
    keep.save(table)
    batch = StateOverlay(table)
    assert admit(ev(on_day(3, settlement_id="T3b")), batch, retention=keep).accepted
    keep.expire(batch, watermark_on(3))
    tombstones = [key for key, value in batch.changed.items() if value is None]
    assert set(tombstones) == {"s:T1", f"~day/2/{20147 + 1}/0"}
    assert "s:T1" not in batch and batch.get("s:T2") is not None
    assert batch["~days/2"] == {str(20147 + 2): 1, str(20147 + 3): 1}
    # The changelog keeps this order, and a crash may cut a large batch short: the
    # first day remembered before any tombstone (a forgotten day never admissible
    # again), the directory after them (it never drops a chunk not yet deleted).
    order = list(batch.changed)
    assert order.index("~forgotten/2") < min(map(order.index, tombstones))
    assert order.index("~days/2") > max(map(order.index, tombstones))
