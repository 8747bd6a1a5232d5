"""What a rule keeps by id for one day — settlements, branches — spread over buckets.

A rule's state is replaced, never mutated: the core compares the new state with the
one before and keeps the old one when the rule fails (``DetectionCore.process``).
Kept as one dict, a day's settlements were copied whole for every settlement added,
so a key's cost per record grew with its day: 12.9 µs at 1,000 settlements a day
of one pharmacy chain, 79.7 µs at 16,000, 412.8 µs at 64,000 (``python
bench/hot_key.py`` measures it). The
ids are spread here over ``BUCKETS`` dicts by a hash that is the same in every
process (CRC-32, not Python's ``hash``), 16 maps of 16 buckets, and adding or
taking one copies two maps of at most 16 and one bucket: a day of 64,000
settlements, a bucket of about 250. Nothing of the old map is changed, so the
state before stays as it was.

>>> day = None
>>> for n in range(1000):
...     day = put(day, f"S{n}", [n, "P440300001"])
>>> get(day, "S7"), get(day, "S1000"), count(day)
([7, 'P440300001'], None, 1000)
>>> len(day), max(len(bucket) for middle in day.values() for bucket in middle.values()) < 20
(16, True)
>>> later = put(day, "S7", None)    # taken out; the day before is untouched
>>> get(later, "S7"), get(day, "S7"), count(later)
(None, [7, 'P440300001'], 999)
>>> sorted(items(bucketed({"S2": [2], "S1": [1]}))) == [("S1", [1]), ("S2", [2])]
True
"""
from __future__ import annotations

import zlib
from typing import Any

BUCKETS = 256  # 16 × 16: a map of up to 16 maps of up to 16 buckets
_HEX = "0123456789abcdef"


def path_of(key: str) -> tuple[str, str]:
    """An id's place: two hex digits of its CRC-32, the same in every process and
    version (Python's own ``hash`` of a string is not)."""
    h = zlib.crc32(key.encode())
    return _HEX[h >> 4 & 15], _HEX[h & 15]


def get(day: dict | None, key: str) -> Any:
    """The value kept for ``key``, None if there is none."""
    if not day:
        return None
    outer, inner = path_of(key)
    return ((day.get(outer) or {}).get(inner) or {}).get(key)


def held(details: dict, key: str) -> bool:
    """Whether any day of a rule's settlements (``{day: {"ids": ..., "x": [...]}}``)
    holds ``key``, kept or reversed: a re-delivered settlement is counted once."""
    outer, inner = path_of(key)
    for entry in details.values():
        if key in ((entry["ids"].get(outer) or {}).get(inner) or ()) or key in entry["x"]:
            return True
    return False


def put(day: dict | None, key: str, value: Any) -> dict:
    """A new map with ``key`` set to ``value`` (None: taken out); ``day`` unchanged."""
    outer, inner = path_of(key)
    top = dict(day or {})
    middle = dict(top.get(outer) or {})
    bucket = dict(middle.get(inner) or {})
    if value is None:
        bucket.pop(key, None)
    else:
        bucket[key] = value
    for holder, name, kept in ((middle, inner, bucket), (top, outer, middle)):
        if kept:
            holder[name] = kept
        else:
            holder.pop(name, None)
    return top


def items(day: dict | None) -> list[tuple[str, Any]]:
    """Every (id, value) kept, bucket by bucket: sort where the order matters."""
    return [pair for middle in (day or {}).values() for bucket in middle.values()
            for pair in bucket.items()]


def count(day: dict | None) -> int:
    return sum(len(bucket) for middle in (day or {}).values() for bucket in middle.values())


def bucketed(flat: dict) -> dict:
    """A map kept as one dict (the layout before buckets) in buckets."""
    out: dict[str, dict] = {}
    for key, value in flat.items():
        outer, inner = path_of(key)
        out.setdefault(outer, {}).setdefault(inner, {})[key] = value
    return out


def settlements_in_buckets(details: dict) -> dict:
    """A rule's settlements by day, ``{day: {"ids": {id: row}, "x": [ids]}}``, kept
    before buckets, with each day's ids in buckets (``x``, the reversed, unchanged)."""
    return {day: {"ids": bucketed(entry["ids"]), "x": entry["x"]}
            for day, entry in details.items()}
