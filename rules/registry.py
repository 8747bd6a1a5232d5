"""The pool registry (contract ``pools/v1``): provinces, pools, institutions.

Rules that need to know a pool's opening balance, a province's capital or a
hospital's beds read it from here; the live worker and replay load the same file.

>>> reg = Registry.from_dict({"schema": "pools/v1",
...     "provinces": {"44": {"name": "广东省", "mode": "adjustment_fund", "capital": "440100"}},
...     "pools": [{"region": "440900", "insurance_type": "resident",
...                "opening_balance": "2100000000.00"}],
...     "institutions": [{"id": "H440100001", "region": "440100", "type": "hospital",
...                       "level": 3, "beds": 2200}]})
>>> reg.opening_balance_fen("440900:resident"), reg.capital_of("440900")
(210000000000, '440100')
>>> reg.institution("H440100001")["beds"]
2200

A province's adjustment scheme (how its adjustment fund, 调剂金, moves money; see
``rules.provincial``) is the optional ``adjustment`` mapping: a ``preset`` and any
of that preset's parameters; whatever is left out takes its default
(``PRESETS``). It is checked when the registry is loaded:

>>> reg = Registry.from_dict({"schema": "pools/v1", "provinces": {"35": {
...     "mode": "adjustment_fund", "adjustment_ratio": {"employee": 0.30},
...     "opening_fund": "1000000.00", "adjustment": {"preset": "fujian", "holdback": 0.04}}}})
>>> scheme = reg.adjustment_scheme("35")
>>> scheme["preset"], scheme["holdback"], scheme["recipient_draw_cap"], scheme["opening_fund_fen"]
('fujian', Decimal('0.04'), Decimal('0.20'), 100000000)
>>> scheme["adjustment_ratio"]   # resident not given: its default
{'employee': Decimal('0.3'), 'resident': Decimal('0.07')}
>>> try:
...     Registry.from_dict({"schema": "pools/v1", "provinces": {"64": {
...         "adjustment": {"preset": "ningxia", "holdback": 0.05}}}})
... except RegistryError as exc:
...     print(exc)
<memory>: provinces.64.adjustment.holdback: not a parameter of preset 'ningxia' (its parameters: year_end_month)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

MODES = ("adjustment_fund", "unified")  # 调剂金 | 统收统支
DEFAULT_MODE = "adjustment_fund"

#: Share of a pool's monthly fund revenue paid up to the adjustment fund, per
#: insurance type, when the province does not say (Ningxia's published shares).
DEFAULT_ADJUSTMENT_RATIO = {"employee": Decimal("0.03"), "resident": Decimal("0.07")}

#: What the adjustment fund holds before the first month of the books.
DEFAULT_OPENING_FUND = "0.00"

#: Each preset's parameters: name → (default, lowest, highest; None = unbounded).
#: Shares are fractions of a pool's fund revenue in the year (0.09 = 9%).
PRESETS: dict[str, dict[str, tuple[Any, Any, Any]]] = {
    # Every month a pool pays its share up; a pool in deficit draws the gap every month.
    "ratio": {},
    # As ratio, plus Fujian's caps and holdback, settled in the year's last month.
    "fujian": {
        "contributor_refund_above": (Decimal("0.09"), Decimal(0), Decimal(1)),
        # A net draw can exceed the year's revenue, so no upper bound.
        "recipient_draw_cap": (Decimal("0.20"), Decimal(0), None),
        "holdback": (Decimal("0.05"), Decimal(0), Decimal(1)),
        "year_end_month": (12, 1, 12),
    },
    # A pool in deficit applies once a year, in the year's last month.
    "ningxia": {
        "year_end_month": (12, 1, 12),
    },
}
DEFAULT_PRESET = "ratio"


class RegistryError(ValueError):
    pass


@dataclass
class Registry:
    provinces: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)  # "region:type" → entry
    institutions: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> "Registry":
        import yaml

        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"{path}: pool registry not found") from None
        except yaml.YAMLError as exc:
            raise RegistryError(f"{path}: not valid YAML ({exc})") from None
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: dict, source: str = "<memory>") -> "Registry":
        if not isinstance(doc, dict) or doc.get("schema") != "pools/v1":
            raise RegistryError(f"{source}: expected a pools/v1 document (schema: pools/v1)")
        pools = {}
        for i, pool in enumerate(doc.get("pools") or []):
            try:
                key = f"{pool['region']}:{pool['insurance_type']}"
                opening = Decimal(str(pool.get("opening_balance", "0")))
            except (KeyError, TypeError, InvalidOperation) as exc:
                raise RegistryError(f"{source}: pools[{i}] is incomplete or has a bad "
                                    f"opening_balance ({exc})") from None
            if opening != opening.quantize(Decimal("0.01")):
                raise RegistryError(f"{source}: pools[{i}].opening_balance has more than "
                                    "two decimals")
            pools[key] = {**pool, "opening_balance_fen": int(opening * 100)}
        institutions = {inst["id"]: inst for inst in doc.get("institutions") or []}
        provinces = {}
        for k, v in (doc.get("provinces") or {}).items():
            if v is None:  # `"44":` with nothing under it: every default
                v = {}
            if not isinstance(v, dict):
                raise RegistryError(f"{source}: provinces.{k}: expected a mapping, got {v!r}")
            provinces[str(k)] = v
        registry = cls(provinces, pools, institutions, source)
        for code in provinces:  # a mistake in the file stops the load, not a later month
            registry.adjustment_scheme(code)
        return registry

    def opening_balance_fen(self, pool_key: str) -> int:
        pool = self.pools.get(pool_key)
        return pool["opening_balance_fen"] if pool else 0

    def capital_of(self, region: str) -> str | None:
        """The capital region of the province ``region`` lies in."""
        province = self.provinces.get(region[:2], {})
        if province.get("capital"):
            return province["capital"]
        for pool in self.pools.values():
            if pool.get("capital") and pool["region"][:2] == region[:2]:
                return pool["region"]
        return None

    def institution(self, institution_id: str) -> dict[str, Any] | None:
        return self.institutions.get(institution_id)

    def adjustment_scheme(self, province: str) -> dict[str, Any]:
        """The province's pooling mode and adjustment scheme with every default filled
        in: ``mode``, ``preset``, ``adjustment_ratio`` (insurance type → Decimal),
        ``opening_fund_fen`` and the preset's parameters (``PRESETS``). A province
        the registry does not list gets every default. Raises ``RegistryError``
        naming the province and the key at fault."""
        entry = self.provinces.get(province) or {}
        where = f"{self.source}: provinces.{province}"
        mode = entry.get("mode", DEFAULT_MODE)
        if mode not in MODES:
            raise RegistryError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        ratios = _mapping(entry.get("adjustment_ratio"), f"{where}.adjustment_ratio",
                          "a mapping of insurance type to share")
        resolved_ratio = dict(DEFAULT_ADJUSTMENT_RATIO)
        for kind, value in ratios.items():
            if kind not in DEFAULT_ADJUSTMENT_RATIO:
                raise RegistryError(f"{where}.adjustment_ratio.{kind}: unknown insurance type "
                                    f"(known: {', '.join(DEFAULT_ADJUSTMENT_RATIO)})")
            resolved_ratio[kind] = _number(value, Decimal(0), Decimal(1),
                                           f"{where}.adjustment_ratio.{kind}")
        opening = _money(entry.get("opening_fund", DEFAULT_OPENING_FUND), f"{where}.opening_fund")
        adjustment = _mapping(entry.get("adjustment"), f"{where}.adjustment",
                              f"a mapping (preset: {' | '.join(PRESETS)}, and its parameters)")
        preset = adjustment.get("preset", DEFAULT_PRESET)
        if preset not in PRESETS:
            raise RegistryError(f"{where}.adjustment.preset: unknown preset {preset!r} "
                                f"(known: {', '.join(PRESETS)})")
        params = PRESETS[preset]
        scheme: dict[str, Any] = {"mode": mode, "preset": preset,
                                  "adjustment_ratio": resolved_ratio, "opening_fund_fen": opening}
        for name, (default, low, high) in params.items():
            scheme[name] = default
        for key, value in adjustment.items():
            if key == "preset":
                continue
            if key not in params:
                hint = (" (opening_fund belongs to the province, beside adjustment)"
                        if key == "opening_fund" else "")
                raise RegistryError(f"{where}.adjustment.{key}: not a parameter of preset "
                                    f"{preset!r} (its parameters: "
                                    f"{', '.join(params) or 'none'}){hint}")
            default, low, high = params[key]
            scheme[key] = _number(value, low, high, f"{where}.adjustment.{key}",
                                  integer=isinstance(default, int))
        return scheme


def _number(value: Any, low, high, where: str, integer: bool = False):
    """A configured number as a Decimal (exact: 0.07 means 7/100, not the nearest
    binary float), or an int when ``integer``; within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise RegistryError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise RegistryError(f"{where}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise RegistryError(f"{where}: expected a finite number, got {value!r}")
    if integer and number != number.to_integral_value():
        raise RegistryError(f"{where}: expected a whole number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RegistryError(f"{where}: {value!r} is out of range (must be {bounds})")
    return int(number) if integer else number


def _money(value: Any, where: str) -> int:
    """Yuan (a string like the contract's amounts, or a number) → integer fen, ≥ 0."""
    amount = _number(value, Decimal(0), None, where)
    if amount != amount.quantize(Decimal("0.01")):
        raise RegistryError(f"{where}: {value!r} has more than two decimals")
    return int(amount * 100)


def _mapping(value, where: str, expected: str) -> dict:
    """A registry mapping that may be left out (then empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: expected {expected}, got {value!r}")
    return value
