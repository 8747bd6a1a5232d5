"""The interchange contract's events: parsing, validation, canonical form, digest."""

from __future__ import annotations

import doctest
import json
import pickle
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import admission, records
from streams.records import (
    MAX_RECORD_BYTES,
    REASON_CODES,
    Contribution,
    Item,
    Reason,
    Rejected,
    Settlement,
    digest,
    fen_to_yuan_str,
    from_canonical,
    parse,
    to_canonical,
)
from tests.factories import OMIT, contribution, dumps, reversal_of, settlement


def codes_of(raw: bytes | str | dict) -> list[str]:
    """The sorted reason codes parse() rejects ``raw`` with (fails if it is accepted)."""
    if isinstance(raw, dict):
        raw = dumps(raw)
    with pytest.raises(Rejected) as info:
        parse(raw)
    reasons = info.value.reasons
    assert reasons, "Rejected without reasons"
    for r in reasons:
        assert r.code in REASON_CODES, r.code
        assert r.message and "\n" not in r.message and "\t" not in r.message
    return sorted(r.code for r in reasons)


def message_of(raw: bytes | str | dict) -> str:
    if isinstance(raw, dict):
        raw = dumps(raw)
    with pytest.raises(Rejected) as info:
        parse(raw)
    return str(info.value)


def raw_with(record: dict, field: str, json_text: str) -> bytes:
    """The record as JSON with ``field``'s value replaced by the literal ``json_text``."""
    marker = "\x00MARK\x00"
    text = json.dumps({**record, field: marker})
    return text.replace(json.dumps(marker), json_text).encode()


# --------------------------------------------------------------------------- valid input


def test_factory_settlement_parses_with_every_attribute():
    ev = parse(dumps(settlement(settlement_id="S1", person_id="P1")))
    assert isinstance(ev, Settlement)
    assert ev.kind == "settlement" and ev.schema == "settlement/v1"
    assert ev.record_id == ev.settlement_id == "S1"
    assert ev.person_id == "P1" and ev.sex == "F" and ev.age == 67
    assert ev.settled_at == datetime(2025, 3, 10, 9, 30, tzinfo=timezone(timedelta(hours=8)))
    assert ev.event_time == ev.settled_at and ev.settled_at.utcoffset() == timedelta(hours=8)
    assert ev.admitted_on == date(2025, 3, 5) and ev.discharged_on == date(2025, 3, 10)
    assert ev.diagnoses == ("I21.9", "E11.9")
    assert (ev.total_cost_fen, ev.fund_paid_fen, ev.personal_paid_fen) == (1234560, 987648, 246912)
    assert ev.items == (Item("bed", 50000, 5.0), Item("drug", 684560, None),
                        Item("exam", 500000, 2.5))
    assert ev.institution_level == 3 and ev.chain_id is None and ev.reverses is None
    assert not ev.is_reversal and not ev.is_cross_region and not ev.is_cross_province
    assert ev.pool_key == "440100:resident"
    assert ev.insured_province == ev.treatment_province == "44"


def test_cross_region_and_cross_province():
    same_province = parse(dumps(settlement(insured_region="440900", filing="long_term")))
    assert same_province.is_cross_region and not same_province.is_cross_province
    other_province = parse(dumps(settlement(insured_region="510100", filing="temporary")))
    assert other_province.is_cross_region and other_province.is_cross_province
    assert other_province.insured_province == "51"
    assert other_province.pool_key == "510100:resident"


def test_factory_contribution_parses():
    ev = parse(dumps(contribution(contribution_id="C1", amount=1500.5)))
    assert isinstance(ev, Contribution)
    assert (ev.kind, ev.record_id, ev.amount_fen, ev.pool_key) == (
        "contribution", "C1", 150050, "440100:employee")
    assert ev.event_time == ev.received_at


def test_frozen():
    ev = parse(dumps(settlement()))
    with pytest.raises(AttributeError):
        ev.age = 3  # type: ignore[misc]


def test_str_and_bytes_and_bom_input_agree():
    rec = settlement(person_id="张三-440100")
    raw = dumps(rec)
    assert parse(raw) == parse(raw.decode()) == parse(b"\xef\xbb\xbf" + raw) \
        == parse(bytearray(raw)) == parse(memoryview(raw))


def test_unknown_fields_are_ignored():
    rec = settlement(settlement_id="S1")
    extra = {**rec, "hospital_name": "某医院", "future": {"nested": [1, 2.3456]}}
    assert parse(dumps(extra)) == parse(dumps(rec))


def test_optional_fields_absent_or_null():
    ev = parse(dumps(settlement(institution_level=OMIT, chain_id=OMIT, reverses=OMIT,
                                items=OMIT)))
    assert ev.institution_level is None and ev.chain_id is None and ev.reverses is None
    assert ev.items is None
    ev = parse(dumps(settlement(visit_type="outpatient", chain_id="G-1")))
    assert ev.admitted_on is None and ev.discharged_on is None and ev.chain_id == "G-1"


def test_pharmacy_without_level_or_diagnosis():
    ev = parse(dumps(settlement(institution_type="pharmacy", visit_type="pharmacy",
                                diagnoses=[], chain_id="CH-37-001", total_cost="88.00",
                                fund_paid="60.00", personal_paid="28.00")))
    assert ev.institution_level is None and ev.diagnoses == ()


@pytest.mark.parametrize("overrides", [
    {"age": 0}, {"age": 130}, {"age": 30.0},
    {"institution_level": 1}, {"institution_level": 2.0}, {"institution_level": None},
    {"sex": "M"}, {"insurance_type": "employee"}, {"institution_type": "primary_care"},
    {"visit_type": "emergency"}, {"filing": "emergency"}, {"filing": "temporary"},
    {"admitted_on": "2025-03-10"},  # same-day discharge
    {"diagnoses": ["A00", "Z99.89", "S72.0A", "C34.9"]},
    {"settlement_id": "x" * 64}, {"person_id": "p" * 128}, {"institution_id": "i" * 64},
    {"settled_at": "2025-03-10T01:30:00Z"}, {"settled_at": "2025-03-10T01:30:00.5-05:30"},
    {"settled_at": "2025-03-10t01:30:00+00:00"},
    {"treatment_region": "650100", "insured_region": "110000", "filing": "long_term"},
    {"items": []} | {"total_cost": "0.00", "fund_paid": "0.00", "personal_paid": "0.00"},
])
def test_valid_variants(overrides):
    parse(dumps(settlement(**overrides)))


@pytest.mark.parametrize("prefix", [
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
    "65"])
def test_all_31_mainland_provinces_are_valid_regions(prefix):
    ev = parse(dumps(settlement(insured_region=prefix + "0100", filing="long_term")))
    assert ev.insured_province == prefix


@pytest.mark.parametrize("prefix", [
    "00", "10", "16", "20", "24", "30", "38", "40", "47", "49", "55", "60", "66", "71", "81",
    "82", "99"])
def test_other_province_prefixes_are_invalid_regions(prefix):
    assert codes_of(settlement(insured_region=prefix + "0100")) == ["invalid_region"]


# --------------------------------------------------------------------------- every reason code

S = settlement
C = contribution

#: (case id, record dict or raw bytes, the sorted reason codes parse() must give)
REJECTIONS: list[tuple[str, Any, list[str]]] = [
    # the record as a whole
    ("not_utf8", b'{"schema": "settlement/v1", "person_id": "\xff\xfe"}', ["not_utf8"]),
    ("binary_garbage", b"\xff\xfe\x00\x01garbage", ["not_utf8"]),
    ("not_json", b"this is not json", ["not_json"]),
    ("truncated", dumps(S())[:-20], ["not_json"]),
    ("nan", b'{"schema": "settlement/v1", "age": NaN}', ["not_json"]),
    ("not_an_object_list", b"[1, 2, 3]", ["not_an_object"]),
    ("not_an_object_str", b'"settlement/v1"', ["not_an_object"]),
    ("not_an_object_null", b"null", ["not_an_object"]),
    ("record_too_large", b'{"pad": "' + b"x" * MAX_RECORD_BYTES + b'"}', ["record_too_large"]),
    ("unknown_schema_v2", {**S(), "schema": "settlement/v2"}, ["unknown_schema"]),
    ("unknown_schema_alert", {"schema": "alert/v1"}, ["unknown_schema"]),
    ("schema_missing", S(schema=OMIT), ["missing_field"]),
    ("schema_wrong_type", S(schema=1), ["wrong_type"]),
    # required fields
    ("missing_person", S(person_id=OMIT), ["missing_field"]),
    ("null_sex", S(sex=None), ["missing_field"]),
    ("missing_amount", S(fund_paid=OMIT, items=OMIT), ["missing_field"]),
    ("missing_diagnoses", S(diagnoses=OMIT), ["missing_field"]),
    ("missing_filing", S(filing=OMIT), ["missing_field"]),
    # types
    ("id_number", S(settlement_id=12345), ["wrong_type"]),
    ("region_number", S(insured_region=440100), ["wrong_type"]),
    ("settled_at_number", S(settled_at=1741570200), ["wrong_type"]),
    ("age_text", S(age="67"), ["wrong_type"]),
    ("age_bool", S(age=True), ["wrong_type"]),
    ("chain_number", S(chain_id=7), ["wrong_type"]),
    ("diagnoses_text", S(diagnoses="I21.9"), ["wrong_type"]),
    ("items_object", S(items={"category": "bed", "amount": "1.00"}), ["wrong_type"]),
    ("items_null", S(items=None), ["wrong_type"]),
    ("item_not_object", S(items=["bed 12345.60"]), ["wrong_type"]),
    ("quantity_text", S(items=[{"category": "drug", "amount": "12345.60", "quantity": "2"}]),
     ["wrong_type"]),
    ("quantity_bool", S(items=[{"category": "drug", "amount": "12345.60", "quantity": True}]),
     ["wrong_type"]),
    ("quantity_null", S(items=[{"category": "drug", "amount": "12345.60", "quantity": None}]),
     ["wrong_type"]),
    ("outpatient_null_date", S(visit_type="outpatient", admitted_on=None), ["wrong_type"]),
    ("reverses_number", S(reverses=17, total_cost="-1.00", fund_paid="-1.00",
                          personal_paid="0.00"), ["wrong_type"]),
    # enumerations and other values
    ("sex", S(sex="female"), ["invalid_value"]),
    ("sex_lower", S(sex="f"), ["invalid_value"]),
    ("insurance_type", S(insurance_type="commercial"), ["invalid_value"]),
    ("institution_type", S(institution_type="clinic"), ["invalid_value"]),
    ("visit_type", S(visit_type="day_surgery"), ["invalid_value"]),
    ("filing", S(filing="yes"), ["invalid_value"]),
    ("enum_not_text", S(filing=["none"]), ["invalid_value"]),
    ("level_4", S(institution_level=4), ["invalid_value"]),
    ("level_bool", S(institution_level=True), ["invalid_value"]),
    ("level_text", S(institution_level="3"), ["invalid_value"]),
    ("pharmacy_with_level", S(institution_type="pharmacy", institution_level=1),
     ["invalid_value"]),
    ("item_category", S(items=[{"category": "food", "amount": "12345.60"}]), ["invalid_value"]),
    ("quantity_huge", raw_with(S(), "items", '[{"category": "drug", "amount": "12345.60", '
                               '"quantity": 1e400}]'), ["invalid_value"]),
    ("reverses_itself", S(settlement_id="S-SELF", reverses="S-SELF", total_cost="-1.00",
                          fund_paid="-1.00", personal_paid="0.00"), ["invalid_value"]),
    ("source", C(source="donation"), ["invalid_value"]),
    # identifiers
    ("id_empty", S(settlement_id=""), ["invalid_id"]),
    ("id_65", S(settlement_id="x" * 65), ["invalid_id"]),
    ("person_129", S(person_id="p" * 129), ["invalid_id"]),
    ("institution_empty", S(institution_id=""), ["invalid_id"]),
    ("contribution_id_empty", C(contribution_id=""), ["invalid_id"]),
    ("reverses_empty", S(reverses="", total_cost="-1.00", fund_paid="-1.00",
                         personal_paid="0.00"), ["invalid_id"]),
    # regions
    ("region_5_digits", S(treatment_region="44010"), ["invalid_region"]),
    ("region_letters", S(treatment_region="44O100"), ["invalid_region"]),
    ("region_fullwidth_digits", S(treatment_region="４４０１００"), ["invalid_region"]),
    ("region_taiwan", S(treatment_region="710000"), ["invalid_region"]),
    ("region_trailing_newline", S(treatment_region="440100\n"), ["invalid_region"]),
    ("pool_region", C(pool_region="000000"), ["invalid_region"]),
    # times
    ("datetime_garbage", S(settled_at="yesterday"), ["invalid_datetime"]),
    ("datetime_date_only", S(settled_at="2025-03-10"), ["invalid_datetime"]),
    ("datetime_feb_30", S(settled_at="2025-02-30T09:00:00+08:00"), ["invalid_datetime"]),
    ("datetime_hour_24", S(settled_at="2025-03-10T24:00:00+08:00"), ["invalid_datetime"]),
    ("datetime_leap_second", S(settled_at="2016-12-31T23:59:60Z"), ["invalid_datetime"]),
    ("datetime_offset_24", S(settled_at="2025-03-10T09:00:00+24:00"), ["invalid_datetime"]),
    ("datetime_offset_no_colon", S(settled_at="2025-03-10T09:00:00+0800"),
     ["invalid_datetime"]),
    ("datetime_lower_z", S(settled_at="2025-03-10T09:00:00z"), ["invalid_datetime"]),
    ("datetime_space_with_offset", S(settled_at="2025-03-10 09:00:00+08:00"),
     ["invalid_datetime"]),
    ("naive", S(settled_at="2025-03-10T09:30:00"), ["datetime_without_offset"]),
    ("naive_fraction", S(settled_at="2025-03-10T09:30:00.250"), ["datetime_without_offset"]),
    ("naive_space", S(settled_at="2025-03-10 09:30:00"), ["datetime_without_offset"]),
    ("naive_contribution", C(received_at="2025-03-01T00:00:00"), ["datetime_without_offset"]),
    ("date_slashes", S(admitted_on="2025/03/05"), ["invalid_date"]),
    ("date_compact", S(admitted_on="20250305"), ["invalid_date"]),
    ("date_feb_29_2025", S(admitted_on="2025-02-29"), ["invalid_date"]),
    ("date_with_time", S(discharged_on="2025-03-10T00:00:00+08:00"), ["invalid_date"]),
    # money
    ("amount_3_decimals_text", S(fund_paid="9876.480", items=OMIT), ["invalid_amount"]),
    ("amount_3_decimals_number", raw_with(S(items=OMIT), "fund_paid", "9876.481"),
     ["invalid_amount"]),
    ("amount_float_noise", raw_with(S(items=OMIT), "fund_paid", "0.30000000000000004"),
     ["invalid_amount"]),
    ("amount_hidden_decimals", raw_with(S(items=OMIT), "fund_paid", "9876.4800000000000001"),
     ["invalid_amount"]),
    ("amount_java_bigdecimal", raw_with(S(items=OMIT), "fund_paid",
                                        "9876.4799999999995634425431489944458007812500"),
     ["invalid_amount"]),
    ("amount_exponent_hidden", raw_with(S(items=OMIT), "fund_paid",
                                        "98764800000000000000001e-19"), ["invalid_amount"]),
    ("amount_tiny", raw_with(S(items=OMIT), "fund_paid", "1e-5"), ["invalid_amount"]),
    ("amount_too_large_text", S(total_cost="12345678901234.00", items=OMIT),
     ["invalid_amount"]),
    ("amount_too_large_int", S(total_cost=10**13, items=OMIT), ["invalid_amount"]),
    ("amount_too_large_float", S(total_cost=1e16, items=OMIT), ["invalid_amount"]),
    ("amount_beyond_double", raw_with(S(items=OMIT), "total_cost", "1e400"), ["invalid_amount"]),
    ("amount_bool", S(fund_paid=True, items=OMIT), ["invalid_amount"]),
    ("amount_null_is_missing", S(fund_paid=None, items=OMIT), ["missing_field"]),
    ("amount_list", S(fund_paid=[9876.48], items=OMIT), ["invalid_amount"]),
    ("amount_thousands", S(fund_paid="9,876.48", items=OMIT), ["invalid_amount"]),
    ("amount_currency", S(fund_paid="¥9876.48", items=OMIT), ["invalid_amount"]),
    ("amount_spaces", S(fund_paid=" 9876.48", items=OMIT), ["invalid_amount"]),
    ("amount_plus", S(fund_paid="+9876.48", items=OMIT), ["invalid_amount"]),
    ("amount_no_int_part", S(fund_paid=".48", personal_paid="12345.12", items=OMIT),
     ["invalid_amount"]),
    ("amount_trailing_dot", S(fund_paid="9876.", items=OMIT), ["invalid_amount"]),
    ("item_amount", S(items=[{"category": "drug", "amount": "12,345.60"}]), ["invalid_amount"]),
    ("contribution_amount", C(amount="5万"), ["invalid_amount"]),
    ("negative_total", S(total_cost="-12345.60", fund_paid="-9876.48",
                         personal_paid="-2469.12", items=OMIT), ["negative_amount"] * 3),
    ("negative_item", S(items=[{"category": "drug", "amount": "12346.60"},
                               {"category": "other", "amount": "-1.00"}]), ["negative_amount"]),
    ("negative_employer", C(amount="-100.00"), ["negative_amount"]),
    ("negative_adjustment_in", C(amount=-100, source="adjustment_in"), ["negative_amount"]),
    ("positive_in_reversal", S(reverses="S-ORIG", total_cost="100.00", fund_paid="100.00",
                               personal_paid="0.00"), ["positive_amount_in_reversal"] * 2),
    ("positive_item_in_reversal", S(reverses="S-ORIG", total_cost="-100.00",
                                    fund_paid="-100.00", personal_paid="0.00",
                                    items=[{"category": "drug", "amount": "-101.00"},
                                           {"category": "drug", "amount": "1.00"}]),
     ["positive_amount_in_reversal"]),
    ("reversal_sign_even_with_bad_reverses", S(reverses="", total_cost="1.00",
                                               fund_paid="1.00", personal_paid="0.00"),
     ["invalid_id", "positive_amount_in_reversal", "positive_amount_in_reversal"]),
    # diagnoses
    ("icd_lower", S(diagnoses=["i21.9"]), ["invalid_diagnosis"]),
    ("icd_no_dot", S(diagnoses=["I219"]), ["invalid_diagnosis"]),
    ("icd_too_long", S(diagnoses=["I21.12345"]), ["invalid_diagnosis"]),
    ("icd_chinese", S(diagnoses=["急性心肌梗死"]), ["invalid_diagnosis"]),
    ("icd_number", S(diagnoses=[121]), ["invalid_diagnosis"]),
    ("icd_two_bad_one_reason", S(diagnoses=["I21.9", "x", "y"]), ["invalid_diagnosis"]),
    ("no_diagnosis_outpatient", S(visit_type="outpatient", diagnoses=[]),
     ["missing_diagnosis"]),
    ("no_diagnosis_inpatient", S(diagnoses=[]), ["missing_diagnosis"]),
    # age
    ("age_131", S(age=131), ["invalid_age"]),
    ("age_negative", S(age=-1), ["invalid_age"]),
    ("age_fraction", S(age=67.5), ["invalid_age"]),
    # rules across fields
    ("amounts_do_not_add_up", S(personal_paid="2469.13"), ["amounts_do_not_add_up"]),
    ("amounts_off_by_one_fen", S(total_cost="0.03", fund_paid="0.01", personal_paid="0.01"),
     ["amounts_do_not_add_up"]),
    ("items_do_not_add_up", S(items=[{"category": "drug", "amount": "12345.59"}]),
     ["items_do_not_add_up"]),
    ("items_empty_but_cost", S(items=[]), ["items_do_not_add_up"]),
    ("discharge_before_admission", S(admitted_on="2025-03-11"), ["discharge_before_admission"]),
    ("inpatient_no_dates", S(admitted_on=OMIT, discharged_on=OMIT), ["inpatient_without_dates"]),
    ("inpatient_no_discharge", S(discharged_on=OMIT), ["inpatient_without_dates"]),
    ("inpatient_null_dates", S(admitted_on=None), ["inpatient_without_dates"]),
]


@pytest.mark.parametrize(("raw", "expected"), [(r, e) for _, r, e in REJECTIONS],
                         ids=[c for c, _, _ in REJECTIONS])
def test_rejections(raw, expected):
    assert codes_of(raw) == sorted(expected)


def test_every_reason_code_is_covered_and_described():
    covered = {code for _, _, expected in REJECTIONS for code in expected}
    covered |= set(admission.ADMISSION_CODES)  # exercised in test_admission.py
    assert covered == set(REASON_CODES)
    assert all(desc and "\n" not in desc for desc in REASON_CODES.values())
    assert all(code.isidentifier() and code == code.lower() for code in REASON_CODES)


def test_all_problems_are_reported_together():
    rec = settlement(settlement_id="", sex="X", age=200, insured_region="990000",
                     settled_at="2025-03-10T09:30:00", admitted_on="2025-03-12",
                     diagnoses=["bad"], personal_paid="1.00", filing="maybe",
                     institution_type="pharmacy", institution_level=3)
    assert codes_of(rec) == sorted([
        "invalid_id", "datetime_without_offset", "invalid_value", "invalid_age",
        "invalid_region", "invalid_value", "discharge_before_admission",
        "invalid_diagnosis", "amounts_do_not_add_up", "invalid_value"])


def test_missing_fields_each_reported():
    assert codes_of({"schema": "settlement/v1"}) == ["missing_field"] * 16


def test_item_problems_are_capped():
    items = [{"category": "x", "amount": "1.00"}] * 40
    with pytest.raises(Rejected) as info:
        parse(dumps(settlement(items=items)))
    assert len(info.value.reasons) == 10
    assert info.value.reasons[-1].message.endswith("(further problems in items not listed)")


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(("record", "words"), [
    (S(age=150), ["age", "150", "0 to 130"]),
    (S(settled_at="2025-03-10T09:30:00"), ["settled_at", "2025-03-10T09:30:00", "+08:00"]),
    (S(insured_region="710000"), ["insured_region", "710000", "31 mainland"]),
    (S(insured_region=440900), ["insured_region", "440900", "as text"]),
    (S(diagnoses=["I219"]), ["diagnoses[0]", "I219", '"I21.9"']),
    (S(diagnoses=["i21.9"]), ["diagnoses[0]", "capital"]),
    (S(fund_paid="9,876.48", items=OMIT), ["fund_paid", "9,876.48", "thousands"]),
    (S(personal_paid="1.00"), ["fund_paid 9876.48", "personal_paid 1.00", "12345.60"]),
    (S(items=[{"category": "drug", "amount": "12345.59"}]), ["12345.59", "12345.60"]),
    (S(admitted_on="2025-03-11"), ["discharged_on 2025-03-10", "admitted_on 2025-03-11"]),
    (S(discharged_on=OMIT), ["inpatient", "discharged_on"]),
    (S(institution_type="pharmacy", institution_level=2), ["institution_level", "pharmacy",
                                                            "null"]),
    (S(person_id=OMIT), ["person_id", "missing"]),
    (C(amount="-5.00"), ["amount", "-5.00", "adjustment_out"]),
    (S(sex="女"), ["sex", '"女"', '"F"', '"M"']),
])
def test_messages_name_field_value_and_expectation(record, words):
    message = message_of(record)
    for word in words:
        assert word in message, (word, message)


def test_not_utf8_message_names_the_byte():
    assert "0xff" in message_of(b'{"a": "\xff"}')


def test_rejected_is_picklable_and_readable():
    with pytest.raises(Rejected) as info:
        parse(dumps(settlement(age=-3, sex="?")))
    exc = info.value
    again = pickle.loads(pickle.dumps(exc))
    assert again.reasons == exc.reasons and again.codes == exc.codes
    assert str(exc) == "; ".join(r.message for r in exc.reasons)
    with pytest.raises(ValueError):
        Rejected(())


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(("json_text", "fen"), [
    ("12.3", 1230), ('"12.30"', 1230), ('"12.3"', 1230), ("12.30", 1230), ("12", 1200),
    ('"12"', 1200), ("0.1", 10), ("0.01", 1), ('"0.05"', 5), ("0", 0), ("-0.0", 0),
    ("0.0", 0), ("12.300", 1230), ("12.3000000000000000000000000000000000000", 1230),
    ("1e2", 10000), ("1.2345e2", 12345), ("1E+2", 10000), ("123.45e0", 12345),
    ("0.001e3", 100),
    ("1234567890123.45", 123456789012345), ('"1234567890123.45"', 123456789012345),
    ("9999999999999.99", 999999999999999), ('"9999999999999.99"', 999999999999999),
    ("9999999999999", 999999999999900), ('"0000012.34"', 1234),
])
def test_money_is_exact(json_text, fen):
    raw = raw_with(contribution(), "amount", json_text)
    assert parse(raw).amount_fen == fen


def test_point_one_plus_point_two():
    raw = (b'{"schema":"contribution/v1","contribution_id":"C","source":"employer",'
           b'"received_at":"2025-03-01T00:00:00Z","pool_region":"440100",'
           b'"insurance_type":"employee","amount":0.3}')
    assert parse(raw).amount_fen == 30
    text = dumps(settlement(items=OMIT)).decode()
    for field, value in (("total_cost", "0.3"), ("fund_paid", "0.1"), ("personal_paid", "0.2")):
        text = text.replace(f'"{field}":"{json.loads(text)[field]}"', f'"{field}":{value}')
    ev = parse(text)
    assert (ev.total_cost_fen, ev.fund_paid_fen, ev.personal_paid_fen) == (30, 10, 20)


def test_many_number_amounts_add_up_exactly():
    # Sums that drift in binary floating point must still reconcile to the fen.
    items = [{"category": "drug", "amount": 0.1}] * 10 + [{"category": "exam", "amount": 1.07}]
    ev = parse(dumps(settlement(items=items, total_cost=2.07, fund_paid=1.04,
                                personal_paid=1.03)))
    assert sum(i.amount_fen for i in ev.items) == ev.total_cost_fen == 207


def test_exact_path_used_only_when_needed_gives_same_result():
    # A time with milliseconds must not be mistaken for a 3-decimal number, and a
    # record that does take the exact path yields the same event.
    rec = settlement(settled_at="2025-03-10T09:30:00.123+08:00", total_cost=12345.6,
                     fund_paid=9876.48, personal_paid=2469.12)
    fast = parse(dumps(rec))
    slow = parse(dumps(rec).replace(b'"fund_paid":9876.48', b'"fund_paid":9876.480'))
    assert fast == slow
    assert not records._risky_numbers(dumps(rec))
    assert records._risky_numbers(b'{"a":1.234}') and records._risky_numbers(b'{"a":[1e5]}')
    assert records._risky_numbers(b'{"a":1.5E+3 }')


def test_fen_to_yuan_str():
    assert [fen_to_yuan_str(x) for x in (0, 1, 10, 100, 123440, -1, -1230, 10**15 - 1)] == [
        "0.00", "0.01", "0.10", "1.00", "1234.40", "-0.01", "-12.30", "9999999999999.99"]


# --------------------------------------------------------------------------- contributions


@pytest.mark.parametrize("amount", ["-100.00", "100.00", "0.00", -7, 7])
def test_adjustment_out_accepts_either_sign(amount):
    ev = parse(dumps(contribution(source="adjustment_out", amount=amount)))
    assert ev.source == "adjustment_out"


@pytest.mark.parametrize("source", sorted(records.SOURCES))
def test_every_source(source):
    assert parse(dumps(contribution(source=source))).source == source


def test_contribution_all_problems_together():
    assert codes_of(contribution(contribution_id=5, received_at="2025-03-01",
                                 pool_region="4401", insurance_type="x", amount="1.234",
                                 source=None)) == sorted([
        "wrong_type", "invalid_datetime", "invalid_region", "invalid_value",
        "missing_field", "invalid_amount"])


# --------------------------------------------------------------------------- time


def test_times_keep_their_offset_and_truncate_below_microseconds():
    ev = parse(dumps(settlement(settled_at="2025-03-10T09:30:00.123456789-05:30")))
    assert ev.settled_at.utcoffset() == -timedelta(hours=5, minutes=30)
    assert ev.settled_at.microsecond == 123456
    assert parse(dumps(settlement(settled_at="2025-03-10T01:30:00Z"))).settled_at.tzinfo is UTC


# --------------------------------------------------------------------------- canonical form


def _events() -> list[Settlement | Contribution]:
    original = settlement(settlement_id="S-RT")
    return [parse(dumps(r)) for r in (
        original,
        reversal_of(original),
        settlement(visit_type="outpatient", items=OMIT, institution_level=OMIT),
        settlement(institution_type="pharmacy", visit_type="pharmacy", diagnoses=[],
                   chain_id="连锁-1", settled_at="2025-03-10T09:30:00.5Z"),
        settlement(settled_at="2025-03-10T09:30:00.000001-03:00", person_id="张三"),
        settlement(items=[{"category": "drug", "amount": 12345.6, "quantity": 0.1},
                          {"category": "bed", "amount": 0, "quantity": 3}]),
        contribution(),
        contribution(source="adjustment_out", amount="-123.40",
                     received_at="2025-12-31T23:59:59.999+08:00"),
    )]


@pytest.mark.parametrize("event", _events(), ids=lambda e: e.record_id)
def test_canonical_round_trip(event):
    canonical = to_canonical(event)
    assert from_canonical(canonical) == event
    # ... also through JSON, as between pipeline stages
    assert from_canonical(orjson.loads(orjson.dumps(canonical))) == event
    # ... and the canonical form is itself a valid record that parses to the same event
    assert parse(orjson.dumps(canonical)) == event
    assert to_canonical(parse(orjson.dumps(canonical))) == canonical
    for key in ("total_cost", "fund_paid", "personal_paid", "amount"):
        if key in canonical:
            assert isinstance(canonical[key], str) and canonical[key][-3] == "."


def test_canonical_format():
    rec = {**settlement(settled_at="2025-03-10T01:30:00Z"), "total_cost": 12345.6,
           "personal_paid": 2469.12}
    c = to_canonical(parse(dumps(rec)))
    assert c["settled_at"] == "2025-03-10T01:30:00Z"
    assert c["total_cost"] == "12345.60" and c["admitted_on"] == "2025-03-05"
    assert c["items"][1] == {"category": "drug", "amount": "6845.60"}  # no quantity: left out
    assert c["institution_level"] == 3 and c["chain_id"] is None and c["reverses"] is None
    assert list(c) == [k for k in settlement() if k in c]  # the contract's field order
    out = to_canonical(parse(dumps(settlement(visit_type="outpatient", items=OMIT))))
    assert "admitted_on" not in out and "items" not in out


# --------------------------------------------------------------------------- digest


def test_digest_ignores_form():
    base = settlement(settlement_id="S-D", settled_at="2025-03-10T01:30:00Z",
                      institution_level=3)
    a = parse(dumps(base))
    reordered = dict(reversed(list(base.items())))
    spaced = json.dumps(base, indent=4, ensure_ascii=True).encode()
    numbers = {**base, "total_cost": 12345.6, "fund_paid": 9876.48, "personal_paid": 2469.12,
               "items": [{**it, "amount": float(it["amount"])} for it in base["items"]]}
    offset = {**base, "settled_at": "2025-03-10T09:30:00+08:00"}  # the same instant
    plus_zero = {**base, "settled_at": "2025-03-10T01:30:00+00:00"}
    extra = {**base, "note": "ignored"}
    int_quantity = {**base, "items": [{**base["items"][0], "quantity": 5.0}, *base["items"][1:]]}
    for variant in (dumps(reordered), spaced, dumps(numbers), dumps(offset), dumps(plus_zero),
                    dumps(extra), dumps(int_quantity)):
        assert digest(parse(variant)) == digest(a)
    pharmacy = settlement(settlement_id="S-D", institution_type="pharmacy",
                          visit_type="pharmacy")
    level_missing = parse(dumps({k: v for k, v in pharmacy.items() if k != "institution_level"}))
    level_null = parse(dumps({**pharmacy, "institution_level": None}))
    assert digest(level_missing) == digest(level_null)
    assert len(digest(a)) == 32 and int(digest(a), 16) >= 0


@pytest.mark.parametrize("change", [
    {"personal_paid": "2469.13", "total_cost": "12345.61", "items": OMIT},
    {"admitted_on": "2025-03-04"},
    {"discharged_on": "2025-03-11", "settled_at": "2025-03-11T09:30:00+08:00"},
    {"diagnoses": ["I21.9", "E11.8"]},
    {"diagnoses": ["E11.9", "I21.9"]},  # the primary diagnosis comes first
    {"diagnoses": ["I21.9"]},
    {"settled_at": "2025-03-10T09:30:01+08:00"},
    {"person_id": "P-other"},
    {"age": 68},
    {"institution_level": 2},
    {"chain_id": "G1"},
    {"filing": "temporary"},
    {"items": OMIT},
    {"items": [{"category": "bed", "amount": "500.00", "quantity": 5},
               {"category": "drug", "amount": "6845.60"},
               {"category": "exam", "amount": "5000.00", "quantity": 3}]},
    {"items": [{"category": "bed", "amount": "500.00", "quantity": 5},
               {"category": "treatment", "amount": "6845.60"},
               {"category": "exam", "amount": "5000.00", "quantity": 2.5}]},
])
def test_digest_sees_real_changes(change):
    base = settlement(settlement_id="S-D", person_id="P-1")
    changed = {k: v for k, v in {**base, **change}.items() if v is not OMIT}
    assert digest(parse(dumps(changed))) != digest(parse(dumps(base)))


def test_digest_differs_between_kinds_and_ids():
    assert digest(parse(dumps(contribution(contribution_id="X")))) != digest(
        parse(dumps(contribution(contribution_id="Y"))))


# --------------------------------------------------------------------------- the JSON Schemas

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "contract"


def _validators():
    if not CONTRACT.is_dir():
        pytest.skip(f"contract folder {CONTRACT} not present")
    jsonschema = pytest.importorskip("jsonschema")
    out = {}
    for name in ("settlement", "contribution"):
        schema = json.loads((CONTRACT / f"{name}.schema.json").read_text())
        cls = jsonschema.Draft202012Validator
        cls.check_schema(schema)
        out[f"{name}/v1"] = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return out


_original = settlement(settlement_id="S-SCHEMA-1")
#: Hand-written valid records: every one must satisfy both the schema and parse().
SCHEMA_VALID = [
    _original,
    reversal_of(_original),
    settlement(visit_type="outpatient", items=OMIT, institution_level=OMIT, chain_id=OMIT,
               reverses=OMIT, total_cost=100, fund_paid=62.5, personal_paid=37.5),
    settlement(institution_type="pharmacy", visit_type="pharmacy", diagnoses=[],
               chain_id="CH-37-001", insured_region="370100", treatment_region="320100",
               filing="temporary", total_cost="88.00", fund_paid="60.00",
               personal_paid="28.00"),
    settlement(visit_type="emergency", filing="emergency", insured_region="510100",
               settled_at="2025-03-10T01:30:00.250Z", age=0, sex="M",
               insurance_type="employee", diagnoses=["S72.0A"], items=OMIT,
               total_cost="0.00", fund_paid="0.00", personal_paid="0.00"),
    contribution(),
    contribution(source="adjustment_out", amount="-1234.56"),
    contribution(source="fiscal_subsidy", amount=1500.25, received_at="2025-03-01T00:00:00Z"),
]

#: Records both the schema and parse() must reject.
SCHEMA_INVALID = [
    settlement(person_id=OMIT),
    settlement(sex="X"),
    settlement(age=131),
    settlement(age="67"),
    settlement(insured_region="4401"),
    settlement(treatment_region="710000"),
    settlement(settled_at="2025-03-10T09:30:00"),
    settlement(diagnoses=["i21.9"]),
    settlement(total_cost="12345.600", items=OMIT),
    settlement(total_cost="1,234.00", items=OMIT),
    settlement(fund_paid=True, items=OMIT),
    settlement(institution_level=4),
    settlement(institution_level=True),
    settlement(admitted_on=OMIT),
    settlement(admitted_on="2025/03/05"),
    settlement(items=[{"category": "food", "amount": "12345.60"}]),
    settlement(items=[{"category": "drug"}]),
    settlement(filing="yes"),
    settlement(settlement_id=""),
    settlement(settlement_id="x" * 65),
    settlement(schema="settlement/v2"),
    contribution(source="gift"),
    contribution(amount="5.001"),
    contribution(received_at="2025-03-01T00:00:00"),
    contribution(pool_region="000000"),
    contribution(contribution_id=OMIT),
]


@pytest.mark.parametrize("record", SCHEMA_VALID, ids=lambda r: r["schema"])
def test_valid_samples_satisfy_schema_and_parse(record):
    validators = _validators()
    errors = [e.message for e in validators[record["schema"]].iter_errors(record)]
    assert not errors
    event = parse(dumps(record))
    canonical = to_canonical(event)
    assert not [e.message for e in validators[record["schema"]].iter_errors(canonical)]


@pytest.mark.parametrize("record", SCHEMA_INVALID, ids=range(len(SCHEMA_INVALID)))
def test_invalid_samples_fail_schema_and_parse(record):
    validators = _validators()
    schema = record.get("schema") if record.get("schema") in validators else (
        "settlement/v1" if "settlement_id" in record else "contribution/v1")
    assert not validators[schema].is_valid(record)
    with pytest.raises(Rejected):
        parse(dumps(record))


# --------------------------------------------------------------------------- docs


@pytest.mark.parametrize("module", [records, admission], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_reason_is_a_value():
    assert Reason("a", "b") == Reason("a", "b")
    assert {Reason("a", "b")}  # hashable


#: Where parse() is stricter than the JSON Schemas: the rules a schema cannot state
#: (README and the schema's $comment), the 13-digit bound on numbers, ids named by
#: reverses, and date-time validity (jsonschema checks "date-time" only when the
#: optional rfc3339-validator package is installed).
STRICTER_THAN_SCHEMA = {
    "amounts_do_not_add_up", "items_do_not_add_up", "discharge_before_admission",
    "missing_diagnosis", "negative_amount", "positive_amount_in_reversal", "invalid_amount",
    "invalid_id", "invalid_value", "invalid_datetime",
}


def test_parse_is_never_looser_than_the_schema():
    """Random mutations of valid records: whatever the schema rejects, parse() rejects."""
    import random

    validators = _validators()
    pool = [None, True, False, 0, 1, -1, 3, 4, 2.0, 0.5, 12.345, 1e20, "", "x", "M", "F",
            "440100", "710000", "44010", "2025-03-10", "2025-03-10T09:30:00",
            "2025-03-10T09:30:00+08:00", "2025-03-10T09:30:00Z", "2025-02-30", "I21.9",
            "i21.9", "12.30", "-12.30", "12.345", "1,234.00", [], ["I21.9"], [1], {},
            {"category": "drug", "amount": "1.00"},
            [{"category": "drug", "amount": "12345.60"}], "none", "temporary", "pharmacy",
            "inpatient", "outpatient", "hospital", "employee", "adjustment_out", "employer",
            "x" * 65, "2025-03-10t09:30:00+08:00", "-0.00", "0", OMIT]
    rng = random.Random(20250310)
    stricter: set[str] = set()
    for _ in range(3000):
        rec = settlement() if rng.random() < 0.7 else contribution()
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*rec, "items", "admitted_on", "institution_level"])
            value = rng.choice(pool)
            if value is OMIT:
                rec.pop(key, None)
            else:
                rec[key] = value
        schema = rec.get("schema")
        schema_ok = isinstance(schema, str) and schema in validators \
            and validators[schema].is_valid(rec)
        try:
            parse(dumps(rec))
        except Rejected as e:
            if schema_ok:
                stricter.update(e.codes)
        else:
            assert schema_ok, rec
    assert stricter <= STRICTER_THAN_SCHEMA


def test_events_are_built_by_their_slots_and_stay_frozen():
    """records._slot_init replaces the dataclass __init__ for speed: the instance must
    be the one the dataclass would build, and still refuse to be changed, since every
    rule sees the same event."""
    import dataclasses

    event = parse(dumps(settlement(items=[{"category": "drug", "amount": "12345.60"}])))
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(records.Settlement)}
    assert records.Settlement(**values) == records.Settlement(*values.values()) == event
    assert hash(records.Settlement(**values)) == hash(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.fund_paid_fen = 0
    with pytest.raises(TypeError):
        records.Settlement(*list(values.values())[:-1])
    assert event.items == (records.Item("drug", 1234560, None),)

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithDefault:
        a: int = 0

    with pytest.raises(TypeError, match="no defaults"):
        records._slot_init(WithDefault)
