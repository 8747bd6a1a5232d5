"""What the quality benchmarks share: seeds, the simulated province's shape and the
rule parameters on the command line, and the line that reproduces a run.

>>> parse_seeds("1-3,7,2")
[1, 2, 3, 7]
>>> ap = arguments("demo", "1-2", "cross_province_surge.min_z=0")
>>> args = ap.parse_args(["--param", "cross_province_surge.min_z=0", "--seeds", "4"])
>>> rule_params(ap, args, ["cross_province_surge"])
{'cross_province_surge': {'min_z': 0}}
>>> command_line("bench/x.py", args)
'python bench/x.py --seeds 4 --days 125 --scale 0.1 --param cross_province_surge.min_z=0'
"""
from __future__ import annotations

import argparse
from datetime import date

import orjson

START = date(2025, 3, 1)


def parse_seeds(text: str) -> list[int]:
    """``"1-5"``, ``"3"``, ``"1,4,9-11"`` -> the seeds, in order, once each."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        for s in range(int(lo), int(hi or lo) + 1):
            if s not in seeds:
                seeds.append(s)
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def arguments(description: str, default_seeds: str, example_param: str
              ) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds(default_seeds),
                    help=f"seeds to simulate: 1-5, 7, 1,3,8-10 (default {default_seeds})")
    ap.add_argument("--days", type=int, default=125)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--start", type=date.fromisoformat, default=START)
    ap.add_argument("--param", action="append", default=[], metavar="RULE.NAME=VALUE",
                    help=f"a rule parameter, e.g. {example_param} (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list each seed's truth entries and alerts")
    return ap


def rule_params(ap: argparse.ArgumentParser, args, rules) -> dict[str, dict]:
    """``--param RULE.NAME=VALUE`` as {rule: {name: value}}; a value that is not JSON
    is taken as a bare string (``planted_categories=Z51``)."""
    params: dict[str, dict] = {r: {} for r in rules}
    for item in args.param:
        name, _, value = item.partition("=")
        rule_id, _, key = name.partition(".")
        if rule_id not in params:
            ap.error(f"--param {item}: rule_id must be one of {', '.join(rules)}")
        try:
            params[rule_id][key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            params[rule_id][key] = value
    return params


def command_line(script: str, args) -> str:
    seeds = ",".join(str(s) for s in args.seeds)
    return (f"python {script} --seeds {seeds} --days {args.days} --scale {args.scale:g}"
            + (f" --start {args.start}" if args.start != START else "")
            + "".join(f" --param {p}" for p in args.param))
