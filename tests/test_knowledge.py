"""Knowledge tables (``rules.knowledge``) and the rule they drive, ``diagnosis_restriction``:
the table is checked at load with errors naming file, line and column; lookup takes
the longest matching prefix; a 20,000-entry table gives the right verdicts on
50,000 settlements (correctness only: speed is ``bench/knowledge_speed.py``'s)."""
from __future__ import annotations

import fnmatch
import random
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from rules.alerts import SHANGHAI
from rules.builtin.diagnosis_restriction import DiagnosisRestriction
from rules.core import RuleConfigError, load_rules
from rules.knowledge import KnowledgeTable, TableError
from streams.records import Settlement, parse
from tests.factories import contribution, dumps, reversal_of, settlement

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "rules" / "builtin" / "diagnosis_restriction.csv"
HEADER = "code,sex,min_age,max_age,description,source\n"


def _write(tmp_path: Path, text: str, name: str = "table.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> TableError:
    with pytest.raises(TableError) as info:
        KnowledgeTable.load(path)
    return info.value


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("row, column, words", [
    ("N40,X,,,prostate,s", "sex", "'X' is not M, F or empty"),
    ("N40,m,,,prostate,s", "sex", "'m' is not M, F or empty"),
    ("O,F,55,10,pregnancy,s", "min_age", "55 is above max_age 10"),
    ("O9A,F,10,55,pregnancy,s", "code", "'O9A' is not an ICD-10 code"),
    ("40N,M,,,prostate,s", "code", "is not an ICD-10 code"),
    ("I21.9.1,M,,,x,s", "code", "is not an ICD-10 code"),
    ("N40.,M,,,x,s", "code", "is not an ICD-10 code"),
    (",M,,,x,s", "code", "empty"),
    ("H25,,forty,,cataract,s", "min_age", "'forty' is not a whole number"),
    ("H25,,,131,cataract,s", "max_age", "'131' is not a whole number"),
    ("H25,,-1,,cataract,s", "min_age", "'-1' is not a whole number"),
    ("H25,,40,,,s", "description", "empty"),
    ("H25,,,,cataract,s", "sex", "restricts nothing"),
])
def test_a_bad_row_is_named_by_file_line_and_column(tmp_path, row, column, words):
    path = _write(tmp_path, HEADER + "C61,M,,,prostate,s\n" + row + "\n")
    error = _error(path)
    assert len(error.problems) == 1, error.problems
    message = error.problems[0]
    assert message.startswith(f"{path}, line 3, column '{column}': "), message
    assert words in message
    assert isinstance(error, RuleConfigError)  # start-up stops with the message


def test_duplicate_codes_name_both_lines_with_or_without_the_dot(tmp_path):
    path = _write(tmp_path, HEADER + "N40.1,M,,,a,s\n# a comment\n\nC61,M,,,b,s\n"
                                     "N401,M,,,c,s\nC61,M,,,d,s\n")
    problems = _error(path).problems
    assert problems == [
        f"{path}, line 6, column 'code': duplicate code 'N401' (first on line 2)",
        f"{path}, line 7, column 'code': duplicate code 'C61' (first on line 5)",
    ]


def test_every_problem_is_listed_at_once(tmp_path):
    path = _write(tmp_path, HEADER + "O,W,10,55,a,s\nN40,M,9,3,b,s\nQQ,M,,,c,s\nC61,M,,,ok,s\n")
    problems = _error(path).problems
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{path}, line 2, column 'sex'", f"{path}, line 3, column 'min_age'",
        f"{path}, line 4, column 'code'"]


def test_header_shape_and_encoding_problems(tmp_path):
    missing = _write(tmp_path, "code,sex,max_age,description\nO,F,55,x\n", "missing.csv")
    assert _error(missing).problems == [
        f"{missing}, line 1: the header lacks the column(s) min_age "
        f"(has: code, sex, max_age, description)"]
    twice = _write(tmp_path, "code,sex,sex,min_age,max_age,description\n", "twice.csv")
    assert f"{twice}, line 1, column 'sex': named twice" in _error(twice).problems[0]
    short = _write(tmp_path, HEADER + "O,F,10,55,pregnancy\n", "short.csv")
    assert _error(short).problems == [f"{short}, line 2: 5 fields where the header has 6"]
    empty = _write(tmp_path, "# only a comment\n", "empty.csv")
    assert "line 1: the table is empty" in _error(empty).problems[0]
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes((HEADER + "O,F,10,55,pregnancy,s\nC61,M,,,前列腺恶性肿瘤,s\n").encode("gbk"))
    assert _error(gbk).problems == [
        f"{gbk}, line 3: not UTF-8 text (save the table as 'CSV UTF-8'; GBK/GB18030 "
        f"is not read)"]
    absent = tmp_path / "absent.csv"
    assert str(absent) in _error(absent).problems[0]


def test_bom_quotes_extra_columns_and_no_source_are_fine(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffcode,description,sex,min_age,max_age,note\n"
                     "O,\"妊娠, 分娩\",F,10,55,from ward 3\n".encode("utf-8"))
    entry = KnowledgeTable.load(path).lookup("O80.0")
    assert (entry.description, entry.source, entry.extra) == ("妊娠, 分娩", "",
                                                              (("note", "from ward 3"),))
    assert entry.as_evidence()["note"] == "from ward 3"


# --------------------------------------------------------------------------- lookup


def test_longest_prefix_wins():
    table = KnowledgeTable.from_text(HEADER + "\n".join([
        "O,F,10,55,pregnancy chapter,s",
        "O80,F,12,50,single spontaneous delivery,s",
        "N4,M,,,N40-N49,s",
        "N40,M,40,,hyperplasia of prostate,s",
        "D07.0,F,,,endometrium,s",
        "D07.4,M,,,penis,s",
        "P,,,1,perinatal,s",
        "P96.8,,,,an exception: no constraint under P96.8,s",
    ]) + "\n")
    code = lambda dx: (table.lookup(dx) or SimpleNamespace(code=None)).code  # noqa: E731
    assert code("O80") == "O80" and code("O80.0") == "O80" and code("O800") == "O80"
    assert code("O82.1") == "O" and code("O") == "O"
    assert code("N40") == "N40" and code("N41.9") == "N4" and code("N50") is None
    assert code("D07.4") == "D07.4" and code("D074") == "D07.4" and code("D07.1") is None
    assert code("D07") is None and code("I21.9") is None
    assert code("P07.3") == "P" and code("P96.8") == "P96.8" and code("P96.89") == "P96.8"
    assert table.lookup("P96.8").violation("M", 60) is None
    assert table.lookup("P07.3").violation("M", 60) == "age"
    assert table.lookup("N41").violation("F", 30) == "sex"
    assert table.lookup("N40").violation("F", 30) == "sex and age"
    assert table.lookup("O80").violation("F", 12) is None  # bounds are inclusive
    assert table.lookup("O80").violation("F", 51) == "age"
    assert len(table) == 8 and [e.code for e in table.entries()][:2] == ["O", "O80"]


def test_the_shipped_table():
    table = KnowledgeTable.load(SHIPPED)
    assert len(table) >= 30
    assert all("not an official list" in e.source for e in table.entries())
    expected = {"O80": ("O", "female, aged 10–55"), "O99.8": ("O", "female, aged 10–55"),
                "N40": ("N40", "male"), "N42.9": ("N42", "male"), "C61": ("C61", "male"),
                "C53.9": ("C53", "female"), "N97.0": ("N97", "female"),
                "P07.3": ("P", "aged 1 or under"), "H25.9": ("H25", "aged 40 or over"),
                "G30.0": ("G30", "aged 40 or over"), "D07.1": ("D07.1", "female"),
                "D07.5": ("D07.5", "male"), "C79.6": ("C79.6", "female")}
    for dx, (code, constraint) in expected.items():
        entry = table.lookup(dx)
        assert (entry.code, entry.constraint) == (code, constraint), dx
    for dx in ("I21.9", "E11.9", "J18.9", "D07.9", "C79.5", "N39.0", "N99.0", "Z00.0"):
        assert table.lookup(dx) is None, dx


def test_the_table_ships_with_the_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["rules"]
    assert any(fnmatch.fnmatch("builtin/diagnosis_restriction.csv", p) for p in patterns)
    assert DiagnosisRestriction.resolve_table("diagnosis_restriction.csv") == SHIPPED


# --------------------------------------------------------------------------- the rule


def _event(**overrides):
    return parse(dumps(settlement(**overrides)))


def test_the_rule_skips_what_it_cannot_judge():
    rule = DiagnosisRestriction()
    male_delivery = settlement(sex="M", age=30, diagnoses=["O80"], settlement_id="S-M1")
    assert rule.wants(parse(dumps(male_delivery)))
    assert rule.apply({"kept": 1}, parse(dumps(male_delivery)))[0] == {"kept": 1}  # no state
    reversal = parse(dumps(reversal_of(male_delivery)))
    assert not rule.wants(reversal) and rule.apply(None, reversal) == (None, [])
    sale = _event(institution_type="pharmacy", visit_type="pharmacy", diagnoses=[],
                  fund_paid="0.00", personal_paid="20.00", total_cost="20.00")
    assert not rule.wants(sale) and rule.apply(None, sale) == (None, [])
    assert not rule.wants(parse(dumps(contribution())))


def test_one_alert_per_settlement_listing_every_conflict():
    rule = DiagnosisRestriction()
    event = _event(settlement_id="S-X", sex="M", age=70,
                   diagnoses=["I10", "N80.1", "O80", "N40"])
    _, (alert,) = rule.apply(None, event)
    assert alert["subject"] == {"kind": "settlement", "id": "S-X"}
    assert alert["evidence"]["diagnosis"] == "N80.1" and alert["evidence"]["position"] == 1
    assert [(c["diagnosis"], c["entry"], c["reason"]) for c in alert["evidence"]["conflicts"]] \
        == [("N80.1", "N80", "sex"), ("O80", "O", "sex and age")]
    again = rule.apply(None, event)[1][0]
    assert again == alert  # the same settlement, the same alert (and alert_id)
    only_primary = DiagnosisRestriction(primary_only=True)
    assert only_primary.apply(None, event) == (None, [])


def test_severity_follows_the_fund_paid():
    rule = DiagnosisRestriction(critical_fund_paid=500.0)
    low = _event(sex="F", age=50, diagnoses=["C61"], fund_paid="499.99", personal_paid="0.01")
    high = _event(sex="F", age=50, diagnoses=["C61"], fund_paid="500.00", personal_paid="0.01")
    assert rule.apply(None, low)[1][0]["severity"] == "warning"
    assert rule.apply(None, high)[1][0]["severity"] == "critical"


def test_a_province_ships_its_own_table(tmp_path):
    own = _write(tmp_path, HEADER + "I10,,18,,essential hypertension (an adult's),gx\n", "gx.csv")
    (rule,) = [r for r in load_rules({"diagnosis_restriction": {
        "provinces": {"45": {"table": str(own)}}}}) if r.rule_id == "diagnosis_restriction"]
    child_hypertension = dict(sex="F", age=9, diagnoses=["I10"])
    in_guangxi = _event(**child_hypertension, treatment_region="450100", insured_region="450100",
                        institution_id="H450100001")
    in_guangdong = _event(**child_hypertension)
    assert rule.apply(None, in_guangxi)[1][0]["evidence"]["table"] == "gx.csv"
    assert rule.apply(None, in_guangdong) == (None, [])
    # ... and only its own: the example table does not apply in Guangxi
    assert rule.apply(None, _event(sex="M", age=30, diagnoses=["O80"],
                                   treatment_region="450100", insured_region="450100")) \
        == (None, [])
    assert rule.apply(None, _event(sex="M", age=30, diagnoses=["O80"]))[1]


def test_a_bad_table_stops_start_up_naming_the_parameter(tmp_path):
    bad = _write(tmp_path, HEADER + "O,W,10,55,pregnancy,s\n")
    with pytest.raises(RuleConfigError) as info:
        load_rules({"diagnosis_restriction": {"provinces": {"44": {"table": str(bad)}}}})
    assert str(info.value) == (f"rules.diagnosis_restriction.table: {bad}, line 2, column "
                               f"'sex': 'W' is not M, F or empty (either sex)")
    with pytest.raises(RuleConfigError, match="rules.diagnosis_restriction.table: .*nowhere.csv"):
        DiagnosisRestriction(table="nowhere.csv")
    with pytest.raises(RuleConfigError, match="expected str"):
        DiagnosisRestriction(table=3)


# --------------------------------------------------------------------------- at scale


def generated_table(n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``n`` distinct code prefixes of every length (1 to 7 characters without the
    dot), each with a constraint: (code, sex, min_age, max_age)."""
    rng = random.Random(seed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    tail = "0123456789X"
    lengths = [1] * 1 + [2] * 4 + [3] * 120 + [4] * 500 + [5] * 300 + [6] * 60 + [7] * 15
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        size = rng.choice(lengths)
        code = rng.choice(letters) + "".join(rng.choice("0123456789")
                                             for _ in range(min(size, 3) - 1))
        if size > 3:
            code += "." + "".join(rng.choice(tail) for _ in range(size - 3))
        if code in seen:
            continue
        seen.add(code)
        kind = rng.random()
        sex = rng.choice("MF") if kind < 0.6 else ""
        lo = rng.randint(0, 60) if kind >= 0.4 and rng.random() < 0.7 else None
        hi = rng.randint(lo or 0, 110) if kind >= 0.4 and (lo is None or rng.random() < 0.5) \
            else None
        if not sex and lo is None and hi is None:
            hi = rng.randint(0, 17)
        rows.append((code, sex, "" if lo is None else str(lo), "" if hi is None else str(hi)))
    return rows


def write_table(path: Path, rows) -> Path:
    path.write_text(HEADER + "".join(f"{c},{s},{lo},{hi},generated {c},test\n"
                                     for c, s, lo, hi in rows), encoding="utf-8")
    return path


def _codes_for(rng: random.Random, rows) -> str:
    """A diagnosis: half of them under a table prefix, half anywhere."""
    if rng.random() < 0.5:
        key = rng.choice(rows)[0].replace(".", "")
    else:
        key = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    while len(key) < 3:
        key += rng.choice("0123456789")
    key += "".join(rng.choice("0123456789X") for _ in range(rng.choice((0, 0, 1, 1, 2, 4))))
    key = key[:7]
    return key if len(key) == 3 else key[:3] + "." + key[3:]


def test_twenty_thousand_entries_over_fifty_thousand_settlements(tmp_path):
    rows = generated_table(20_000, seed=7)
    path = write_table(tmp_path / "big.csv", rows)
    table = KnowledgeTable.load(path)
    assert len(table) == 20_000

    # The reference: one dict of every entry, every prefix of the code tried, longest
    # first — checked itself against a plain scan of all 20,000 entries on a sample.
    entries = {c.replace(".", ""): (c, s or None, int(lo) if lo else None,
                                    int(hi) if hi else None) for c, s, lo, hi in rows}

    def reference(dx):
        key = dx.replace(".", "")
        for n in range(len(key), 0, -1):
            if key[:n] in entries:
                return entries[key[:n]]
        return None

    rng = random.Random(11)
    sample = [_codes_for(rng, rows) for _ in range(150)]
    for dx in sample:
        key = dx.replace(".", "")
        scanned = max((k for k in entries if key.startswith(k)), key=len, default=None)
        assert reference(dx) == (entries[scanned] if scanned else None), dx

    rule = DiagnosisRestriction(table=str(path), critical_fund_paid=1000.0)
    start = datetime(2025, 1, 1, 8, tzinfo=SHANGHAI)
    expected, found, hits = {}, {}, 0
    for i in range(50_000):
        dxs = tuple(_codes_for(rng, rows) for _ in range(rng.choice((1, 1, 2, 3))))
        sex, age = rng.choice("MF"), rng.randint(0, 100)
        fund = rng.randint(0, 200_000)
        event = Settlement(
            schema="settlement/v1", settlement_id=f"G{i}", settled_at=start + timedelta(
                seconds=37 * i), person_id=f"P{i % 977}", sex=sex, age=age,
            insurance_type="resident", insured_region="440100", treatment_region="440100",
            institution_id=f"H4401000{i % 50:02d}", institution_type="hospital",
            institution_level=2, chain_id=None, visit_type="outpatient", admitted_on=None,
            discharged_on=None, diagnoses=dxs, total_cost_fen=fund + 100,
            fund_paid_fen=fund, personal_paid_fen=100, items=None, filing="none",
            reverses=None)
        for position, dx in enumerate(dxs):
            entry = reference(dx)
            if entry is None:
                continue
            hits += 1
            _, esex, lo, hi = entry
            if (esex and esex != sex) or (lo is not None and age < lo) \
                    or (hi is not None and age > hi):
                expected.setdefault(event.settlement_id, (dx, position, entry[0],
                                                          fund >= 100_000))
        state, alerts = rule.apply(None, event)
        assert state is None and len(alerts) <= 1
        for alert in alerts:
            ev = alert["evidence"]
            found[alert["subject"]["id"]] = (ev["diagnosis"], ev["position"], ev["entry"]["code"],
                                             alert["severity"] == "critical")
    assert hits > 20_000 and 5_000 < len(expected) < 50_000  # the test tests something
    assert found == expected
