"""The provincial layer (rules.provincial) and the registry's adjustment schemes.

Every figure is worked by hand in the comments, in fen.
"""
from __future__ import annotations

import json
from fractions import Fraction

import pytest

from rules.provincial import provincial_positions, render_positions
from rules.registry import Registry, RegistryError


def book(pool, months, opening=0, carried=(0, 0)):
    """A pool's book; ``months`` maps month → (rev, e) or (rev, e, out, in, s)."""
    rows = {}
    for month, row in months.items():
        rev, e, out, in_, s = (*row, 0, 0, 1) if len(row) == 2 else row
        rows[month] = {"i": rev - out + in_, "e": e, "rev": rev, "out": out, "in": in_,
                       "s": s}
    return {"pool": pool, "opening": opening, "first": min(months) + "-01" if months else None,
            "closed": None, "days": {}, "months": rows,
            "carried": list(carried), "floor": None, "late": 0}


def registry(provinces, pools=()):
    return Registry.from_dict({"schema": "pools/v1", "provinces": provinces,
                               "pools": list(pools)})


def by_pool(view):
    return {p.pool: p for p in view.pools}


def assert_money_kept(view):
    # Whatever the pools net, the fund lost: fund = opening − Σ net positions.
    assert view.fund_balance == view.opening_fund - sum(p.net_position for p in view.pools)
    for p in view.pools:
        assert p.own_balance == (p.starting_balance + p.revenue - p.expenditure - p.paid_up
                                 + p.drawn + p.refunded + p.referred)


# --------------------------------------------------------------------------- ratio


def test_ratio_a_pool_in_deficit_draws_its_gap_and_recorded_flows_are_not_counted_twice():
    reg = registry({"44": {"name": "广东省", "mode": "adjustment_fund",
                           "adjustment_ratio": {"employee": 0.03, "resident": 0.07},
                           "opening_fund": "1000.00"}})
    books = {
        # employee, 3%: pays 15 000 a month
        "440100:employee": book("440100:employee", {
            "2025-01": (500_000, 300_000, 15_000, 0, 1),
            "2025-02": (500_000, 400_000, 15_000, 0, 1)}, opening=1_000_000),
        # resident, 7%: pays 7 000 a month; the data also recorded 30 000 drawn
        "440900:resident": book("440900:resident", {
            "2025-01": (100_000, 150_000, 7_000, 30_000, 1),
            "2025-02": (100_000, 90_000, 7_000, 0, 1)}, opening=20_000),
    }
    view = provincial_positions(reg, books)["44"]
    assert (view.mode, view.preset, view.as_of, view.name) == (
        "adjustment_fund", "ratio", "2025-02", "广东省")
    a, b = by_pool(view)["440100:employee"], by_pool(view)["440900:resident"]
    # Jan: A 1 000 000 + 500 000 − 300 000 − 15 000 = 1 185 000
    #      B 20 000 + 100 000 − 150 000 − 7 000 = −37 000; fund 100 000 + 22 000 = 122 000,
    #      B draws 37 000 → 0, fund 85 000
    # Feb: A 1 185 000 + 500 000 − 400 000 − 15 000 = 1 270 000
    #      B 0 + 100 000 − 90 000 − 7 000 = 3 000; fund 85 000 + 22 000 = 107 000
    assert (a.revenue, a.paid_up, a.drawn, a.net_position, a.own_balance) == (
        1_000_000, 30_000, 0, -30_000, 1_270_000)
    assert (b.revenue, b.paid_up, b.drawn, b.net_position, b.own_balance) == (
        200_000, 14_000, 37_000, 23_000, 3_000)
    assert view.fund_balance == 107_000
    # The recorded flows are shown, not used (i holds them: the model uses rev).
    assert (a.recorded_paid_up, a.recorded_drawn) == (30_000, 0)
    assert (b.recorded_paid_up, b.recorded_drawn) == (14_000, 30_000)
    # months of payment: 3 000 ÷ mean(150 000, 90 000) = 1/40
    assert b.months_of_payment == Fraction(1, 40)
    assert (b.shortfall, view.held_back, view.referred) == (0, 0, 0)
    assert_money_kept(view)


def test_ratio_times_revenue_is_rounded_half_up_to_the_fen():
    # 7% of 150 fen = 10.5 → 11 (banker's rounding would give 10)
    view = provincial_positions(registry({"44": {}}), {
        "440900:resident": book("440900:resident", {"2025-01": (150, 0)})})["44"]
    assert view.pools[0].paid_up == 11
    assert view.fund_balance == 11


def test_when_the_fund_is_short_it_pays_pro_rata_to_the_gaps_floored_to_the_fen():
    reg = registry({"45": {"adjustment_ratio": {"resident": 0.08}}})
    books = {
        # pays 8% of 100 000 = 8 000 a month, spends nothing
        "450100:resident": book("450100:resident", {"2025-01": (100_000, 0),
                                                     "2025-02": (100_000, 0)}),
        "450200:resident": book("450200:resident", {"2025-01": (0, 3_000)}),
        "450300:resident": book("450300:resident", {"2025-01": (0, 7_001)}),
    }
    jan = by_pool(provincial_positions(reg, books, until="2025-01")["45"])
    # gaps 3 000 + 7 001 = 10 001 > fund 8 000:
    #   8 000 × 3 000 / 10 001 = 2 399.76 → 2 399;  8 000 × 7 001 / 10 001 = 5 600.32 → 5 600
    #   the odd fen (8 000 − 7 999 = 1) stays in the fund
    assert (jan["450200:resident"].drawn, jan["450300:resident"].drawn) == (2_399, 5_600)
    assert (jan["450200:resident"].own_balance, jan["450300:resident"].own_balance) == (
        -601, -1_401)
    assert provincial_positions(reg, books, until="2025-01")["45"].fund_balance == 1
    # Feb: fund 1 + 8 000 = 8 001 covers the gaps left (601 + 1 401 = 2 002) in full
    view = provincial_positions(reg, books)["45"]
    feb = by_pool(view)
    assert (feb["450200:resident"].drawn, feb["450300:resident"].drawn) == (3_000, 7_001)
    assert (feb["450200:resident"].own_balance, feb["450300:resident"].own_balance) == (0, 0)
    assert view.fund_balance == 5_999
    assert_money_kept(view)


# --------------------------------------------------------------------------- fujian


FUJIAN = {"35": {"name": "福建省", "mode": "adjustment_fund",
                 "adjustment_ratio": {"employee": 0.30}, "opening_fund": "5000.00",
                 "adjustment": {"preset": "fujian"}}}


def fujian_books():
    # employee 30%. F raises much more than it spends; G and H spend more than they raise.
    return {
        "350100:employee": book("350100:employee", {"2025-11": (1_000_000, 600_000),
                                                    "2025-12": (1_000_000, 600_000)}),
        "350200:employee": book("350200:employee", {"2025-11": (100_000, 400_000),
                                                    "2025-12": (100_000, 400_000)}),
        "350300:employee": book("350300:employee", {"2025-11": (200_000, 250_000),
                                                    "2025-12": (200_000, 250_000)}),
    }


def test_fujian_holds_back_five_percent_of_each_allocation_during_the_year():
    view = provincial_positions(registry(FUJIAN), fujian_books(), until="2025-11")["35"]
    f, g, h = (by_pool(view)[k] for k in ("350100:employee", "350200:employee",
                                          "350300:employee"))
    # Nov: F 1 000 000 − 600 000 − 300 000 = 100 000; G 100 000 − 400 000 − 30 000 = −330 000;
    #      H 200 000 − 250 000 − 60 000 = −110 000. Fund 500 000 + 390 000 = 890 000 covers
    #      both gaps; 5% held back: G 16 500, H 5 500 (their gaps stay open by that much)
    assert (g.allocated, g.held_back, g.drawn, g.own_balance) == (330_000, 16_500, 313_500,
                                                                   -16_500)
    assert (h.allocated, h.held_back, h.drawn, h.own_balance) == (110_000, 5_500, 104_500,
                                                                   -5_500)
    assert f.own_balance == 100_000 and f.refunded == 0       # no year end yet
    assert view.held_back == 22_000
    assert view.fund_balance == 890_000 - 440_000 + 22_000     # held money is the fund's
    assert view.referred == 0
    assert_money_kept(view)


def test_fujian_year_end_redistributes_caps_recipients_and_refunds_contributors():
    view = provincial_positions(registry(FUJIAN), fujian_books())["35"]
    f, g, h = (by_pool(view)[k] for k in ("350100:employee", "350200:employee",
                                          "350300:employee"))
    # Dec: F 100 000 + 100 000 = 200 000; G −16 500 − 330 000 = −346 500;
    #      H −5 500 − 110 000 = −115 500; fund 450 000 + 390 000 = 840 000 covers both:
    #      held back G 17 325, H 5 775 → held 22 000 + 23 100 = 45 100; fund left 378 000.
    # Redistribution by the year's allocations, G 676 500 : H 225 500 = 3 : 1:
    #      G 33 825, H 11 275 → G own 16 500, H own 5 500.
    assert (g.allocated, g.held_back, g.redistributed) == (676_500, 33_825, 33_825)
    assert (h.allocated, h.held_back, h.redistributed) == (225_500, 11_275, 11_275)
    # Cap: G net draw 676 500 − 60 000 = 616 500, cap 20% × 200 000 = 40 000 → 576 500
    #      referred; H 225 500 − 120 000 = 105 500, cap 80 000 → 25 500 referred.
    #      The pools keep the money; the adjustment fund is repaid.
    assert (g.referred, g.drawn, g.net_position, g.own_balance) == (576_500, 100_000, 40_000,
                                                                     16_500)
    assert (h.referred, h.drawn, h.net_position, h.own_balance) == (25_500, 200_000, 80_000,
                                                                     5_500)
    assert view.referred == 602_000
    # Refund: F paid 600 000 net, 9% × 2 000 000 = 180 000 → 420 000 back.
    assert (f.paid_up, f.refunded, f.net_position, f.own_balance) == (600_000, 420_000,
                                                                       -180_000, 620_000)
    # Fund: 378 000 + 576 500 + 25 500 − 420 000 = 560 000; nothing held any more.
    assert (view.fund_balance, view.held_back) == (560_000, 0)
    assert_money_kept(view)


def test_fujian_parameters_come_from_the_registry():
    provinces = {"35": {**FUJIAN["35"], "adjustment": {
        "preset": "fujian", "holdback": 0, "recipient_draw_cap": 1, "contributor_refund_above": 1}}}
    view = provincial_positions(registry(provinces), fujian_books())["35"]
    # No holdback: both months' gaps paid in full (G 330 000 each, H 110 000 each).
    # Cap 100%: G's net draw 660 000 − 60 000 = 600 000 > 200 000 → 400 000 referred;
    # H's 220 000 − 120 000 = 100 000 ≤ 400 000. Refund above 100%: none.
    g = by_pool(view)["350200:employee"]
    assert (g.held_back, g.redistributed, g.referred, g.drawn) == (0, 0, 400_000, 260_000)
    assert by_pool(view)["350300:employee"].referred == 0
    assert by_pool(view)["350100:employee"].refunded == 0
    assert_money_kept(view)


# --------------------------------------------------------------------------- ningxia


NINGXIA = {"64": {"name": "宁夏回族自治区", "mode": "adjustment_fund",
                  "adjustment_ratio": {"employee": 0.03, "resident": 0.07},
                  "adjustment": {"preset": "ningxia"}}}


def ningxia_books():
    months = ("2025-10", "2025-11", "2025-12", "2026-01")
    return {
        # pays 70 000 a month, keeps 430 000
        "640100:resident": book("640100:resident", {m: (1_000_000, 500_000) for m in months}),
        # 100 000 − 120 000 − 7 000 = −27 000 a month
        "640200:resident": book("640200:resident", {m: (100_000, 120_000) for m in months},
                                opening=10_000),
    }


def test_ningxia_draws_once_a_year_in_december_only():
    reg = registry(NINGXIA)
    nov = provincial_positions(reg, ningxia_books(), until="2025-11")["64"]
    k = by_pool(nov)["640200:resident"]
    # Oct −17 000, Nov −44 000: in deficit but no draw before December
    assert (k.drawn, k.own_balance, k.shortfall, nov.fund_balance) == (0, -44_000, 44_000,
                                                                       154_000)
    dec = provincial_positions(reg, ningxia_books(), until="2025-12")["64"]
    k = by_pool(dec)["640200:resident"]
    # Dec −71 000; fund 231 000 pays it: 160 000 left
    assert (k.drawn, k.own_balance, dec.fund_balance) == (71_000, 0, 160_000)
    view = provincial_positions(reg, ningxia_books())["64"]
    j, k = by_pool(view)["640100:resident"], by_pool(view)["640200:resident"]
    # Jan: a new gap of 27 000 waits for next December though the fund has 237 000
    assert (k.drawn, k.own_balance, k.net_position, view.fund_balance) == (
        71_000, -27_000, 43_000, 237_000)
    assert (j.paid_up, j.own_balance, j.net_position) == (280_000, 1_720_000, -280_000)
    assert_money_kept(view)


def test_ningxia_application_month_is_configurable():
    provinces = {"64": {**NINGXIA["64"], "adjustment": {"preset": "ningxia",
                                                        "year_end_month": 11}}}
    view = provincial_positions(registry(provinces), ningxia_books(), until="2025-12")["64"]
    k = by_pool(view)["640200:resident"]
    # Nov: draws 44 000 (fund 154 000 → 110 000); Dec: −27 000 stays open, the fund
    # takes 70 000 + 7 000 → 187 000
    assert (k.drawn, k.own_balance, view.fund_balance) == (44_000, -27_000, 187_000)


# --------------------------------------------------------------------------- unified


def test_unified_the_provincial_fund_is_the_sum_of_the_sub_accounts():
    reg = registry({"11": {"name": "北京市", "mode": "unified"}})
    books = {
        # folded months carried 300 000 in, 100 000 out:
        # 1 000 000 + 200 000 + (200 000 − 100 000) + (200 000 − 300 000) = 1 200 000
        "110100:employee": book("110100:employee", {
            "2025-01": (200_000, 100_000), "2025-02": (200_000, 300_000)},
            opening=1_000_000, carried=(300_000, 100_000)),
        # Jan has no settlement (s = 0) and does not count in the mean: 50 000 + 5 000
        # + 10 000 − 60 000 = 5 000
        "110200:resident": book("110200:resident", {
            "2025-01": (5_000, 0, 0, 0, 0), "2025-02": (10_000, 60_000)}, opening=50_000),
    }
    view = provincial_positions(reg, books)["11"]
    emp, res = by_pool(view)["110100:employee"], by_pool(view)["110200:resident"]
    assert (view.mode, view.preset, view.as_of) == ("unified", None, "2025-02")
    assert (emp.balance, emp.income, emp.expenditure) == (1_200_000, 400_000, 400_000)
    assert emp.months_of_payment == 6                 # 1 200 000 ÷ mean(100 000, 300 000)
    assert res.balance == 5_000
    assert res.months_of_payment == Fraction(1, 12)  # 5 000 ÷ 60 000
    assert view.fund_balance == 1_205_000
    # 1 205 000 ÷ (200 000 + 60 000) = 241/52 ≈ 4.63
    assert view.months_of_payment == Fraction(241, 52)
    lines = render_positions({"11": view})
    assert lines[0] == "11 北京市 — unified collection and payment (统收统支), as of 2025-02"
    assert lines[1] == "  provincial fund 12050.00 yuan, 4.63 months of payment"


# --------------------------------------------------------------------------- both


def test_registry_pools_without_a_book_and_provinces_without_an_entry_are_shown():
    reg = registry({}, pools=[{"region": "430100", "insurance_type": "employee",
                               "opening_balance": "123.45"}])
    views = provincial_positions(reg, {
        "360100:resident": book("360100:resident", {"2025-03": (1_000, 0)})})
    assert sorted(views) == ["36", "43"]
    quiet = views["43"].pools[0]
    assert (quiet.pool, quiet.own_balance, quiet.paid_up) == ("430100:employee", 12_345, 0)
    # no province entry: mode adjustment_fund, preset ratio, resident 7% by default
    assert (views["36"].preset, views["36"].pools[0].paid_up) == ("ratio", 70)
    assert views["43"].as_of == "2025-03"


def test_render_and_as_dict():
    view = provincial_positions(registry(FUJIAN), fujian_books())["35"]
    lines = render_positions({"35": view})
    assert lines[0] == "35 福建省 — adjustment fund (调剂金), preset fujian, as of 2025-12"
    assert lines[1] == ("  adjustment fund 5600.00 yuan (opening 5000.00; held back 0.00; "
                        "referred to the risk fund 6020.00)")
    assert lines[3].startswith("  350200:employee  revenue 2000.00  paid up 600.00 "
                               "(recorded 0.00)  drawn 1000.00 (recorded 0.00)")
    assert "referred 5765.00  net 400.00  own balance 165.00" in lines[3]
    doc = json.loads(json.dumps(view.as_dict()))
    assert doc["scheme"]["holdback"] == "0.05"
    assert doc["pools"][0]["refunded"] == 420_000


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("province, message", [
    ({"adjustment": {"preset": "zhejiang"}},
     r"provinces\.33\.adjustment\.preset: unknown preset 'zhejiang' "
     r"\(known: ratio, fujian, ningxia\)"),
    ({"adjustment": {"preset": "fujian", "hold_back": 0.05}},
     r"provinces\.33\.adjustment\.hold_back: not a parameter of preset 'fujian'"),
    ({"adjustment": {"holdback": 0.05}},   # ratio (the default) has no holdback
     r"provinces\.33\.adjustment\.holdback: not a parameter of preset 'ratio' "
     r"\(its parameters: none\)"),
    ({"adjustment_ratio": {"resident": 1.5}},
     r"provinces\.33\.adjustment_ratio\.resident: 1\.5 is out of range \(must be between 0 and 1\)"),
    ({"adjustment_ratio": {"resident": -0.01}}, r"adjustment_ratio\.resident: .*out of range"),
    ({"adjustment_ratio": {"retired": 0.05}},
     r"provinces\.33\.adjustment_ratio\.retired: unknown insurance type"),
    ({"adjustment_ratio": {"employee": "three percent"}},
     r"adjustment_ratio\.employee: expected a number"),
    ({"mode": "provincial"},
     r"provinces\.33\.mode: 'provincial' is not one of adjustment_fund, unified"),
    ({"adjustment": {"preset": "fujian", "holdback": 1.2}},
     r"provinces\.33\.adjustment\.holdback: 1\.2 is out of range"),
    ({"adjustment": {"preset": "fujian", "recipient_draw_cap": -1}},
     r"recipient_draw_cap: -1 is out of range \(must be at least 0\)"),
    ({"adjustment": {"preset": "ningxia", "year_end_month": 13}},
     r"provinces\.33\.adjustment\.year_end_month: 13 is out of range"),
    ({"adjustment": {"preset": "ningxia", "year_end_month": 6.5}},
     r"year_end_month: expected a whole number"),
    ({"adjustment": {"preset": "fujian", "holdback": True}}, r"holdback: expected a number"),
    ({"adjustment": {"opening_fund": "10.00"}},
     r"adjustment\.opening_fund: .*opening_fund belongs to the province"),
    ({"opening_fund": "10.001"}, r"provinces\.33\.opening_fund: '10\.001' has more than two"),
    ({"opening_fund": "-5.00"}, r"provinces\.33\.opening_fund: .*out of range"),
    ({"adjustment": "fujian"}, r"provinces\.33\.adjustment: expected a mapping"),
])
def test_registry_rejects_a_bad_scheme_naming_province_and_key(province, message):
    with pytest.raises(RegistryError, match=message):
        registry({"33": province})


def test_registry_resolves_defaults_and_keeps_existing_callers_working():
    reg = registry({"44": {"name": "广东省", "capital": "440100"}, "64": None})
    scheme = reg.adjustment_scheme("44")
    assert (scheme["mode"], scheme["preset"], scheme["opening_fund_fen"]) == (
        "adjustment_fund", "ratio", 0)
    assert {k: str(v) for k, v in scheme["adjustment_ratio"].items()} == {
        "employee": "0.03", "resident": "0.07"}
    assert reg.capital_of("440900") == "440100"
    ningxia = registry(NINGXIA).adjustment_scheme("64")
    assert (ningxia["preset"], ningxia["year_end_month"]) == ("ningxia", 12)
    fujian = registry({"35": {"adjustment": {"preset": "fujian", "holdback": "0.04"}}}) \
        .adjustment_scheme("35")
    assert {k: str(fujian[k]) for k in ("contributor_refund_above", "recipient_draw_cap",
                                        "holdback", "year_end_month")} == {
        "contributor_refund_above": "0.09", "recipient_draw_cap": "0.20", "holdback": "0.04",
        "year_end_month": "12"}
