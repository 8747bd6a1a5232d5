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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any


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
        provinces = {str(k): v for k, v in (doc.get("provinces") or {}).items()}
        return cls(provinces, pools, institutions, source)

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
