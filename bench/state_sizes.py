"""How large one key's rule state grows: the largest value of each rule.

    python bench/state_sizes.py [--days 30] [--scale 1.0] [--seed 11]

A worker keeps each rule's state for one key (a person, an institution, a chain, a
province) as one value of its rule-state table, and writes the whole value to the
table's changelog whenever a batch changes it. A topic takes messages up to
``max.message.bytes`` (a broker's default is about 1 MB, held against the record
batch as compressed), and a value grows with the size of what its key stands
for — a pharmacy chain's branches and sales, a province's institutions; a value
longer than ``FUNDWATCH_STATE_PIECE_BYTES`` is written in pieces
(``streams.changelog``). This replays a simulated province through the offline
driver (the same code per record as a worker) and prints, per rule, its largest
value as the changelog holds it (JSON), that value compressed with zstd (the
worker's default compression), and the messages one write of it takes at the
default piece size (a manifest and its pieces, or the value whole).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka.codec import zstd_encode

from infra.config import Settings
from streams.app import load_registry
from streams.bench import core_rate, simulated_province
from streams.changelog import PIECE_BYTES, encode_value
from streams.replay import replay_pipeline


def main() -> int:
    args, events = simulated_province(__doc__.split("\n\n")[0])
    settings = Settings(partitions=4)
    pipeline = replay_pipeline(settings, load_registry(settings))
    core_rate(settings, events, pipeline)  # feeds every record, as the bench does
    sizes = sorted(((len(encode_value(value)), slot) for slot, value in pipeline.state.items()),
                   reverse=True)
    print(f"{len(events):,} records ({args.days} days, scale {args.scale}, seed {args.seed}); "
          f"{len(sizes):,} state values")
    largest: dict[str, tuple[int, str]] = {}
    for size, slot in sizes:
        largest.setdefault(str(slot).split("|", 1)[0], (size, str(slot)))
    print(f"  {'rule or book':<28} {'largest value':>14} {'zstd':>12} {'messages':>9}  key")
    for rule, (size, slot) in largest.items():
        zstd = len(zstd_encode(encode_value(pipeline.state[slot])))
        messages = 1 if size <= PIECE_BYTES else -(-size // PIECE_BYTES) + 1
        print(f"  {rule:<28} {size:>12,} B {zstd:>10,} B {messages:>9}  {slot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
