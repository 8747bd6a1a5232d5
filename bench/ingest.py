"""Benchmark of the live path: ``python bench/ingest.py [--quick]`` = ``fundwatch bench``.

See ``streams/bench.py``; the last line printed is the contract's JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
