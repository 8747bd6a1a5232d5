"""``fundwatch rules``: list, explain, test and scaffold detection rules.

For data engineers. Every command sees the rules ``rules.core.discover`` finds
(the built-ins under ``rules/builtin`` and the ``fundwatch.rules`` entry points),
plus those of any ``--dir DIR`` (a directory of rule modules of one's own, each
``NAME.py`` with its ``NAME.fixture.json``):

* ``rules list`` — one line per rule (id, subject kind, origin, description), its
  parameters indented, with the values the config file (``FUNDWATCH_CONFIG``) sets;
* ``rules explain ID`` — what it detects, its parameters, its fixture and an
  example alert made by running the fixture through the offline driver;
* ``rules test [ID...]`` — the conformance battery (``rules.fixtures``), ``PASS`` or
  ``FAIL`` with the differences; exit 1 if any rule fails;
* ``rules new NAME`` — a small working rule and its fixture, to edit;
* ``rules events ID`` — a fixture's events as JSON lines, for ``fundwatch replay``.

>>> doc_prose('''title.
...
... What it does.
...
... >>> 1 + 1
... 2
... >>> print("a")
... a
...
... After the example.''')
'title.\\n\\nWhat it does.\\n\\nAfter the example.'
>>> scaffold_class_name("night_stays"), scaffold_class_name("param")
('NightStays', 'ParamRule')
"""
from __future__ import annotations

import importlib
import inspect
import json
import keyword
import os
import pkgutil
import shutil
import sys
import textwrap
import traceback
from pathlib import Path
from string import Template
from typing import Any, Mapping

from rules.core import (Rule, RuleConfigError, config_problems, discover,
                        raise_config_problems)

Rules = dict[str, tuple[type[Rule], str]]


# --------------------------------------------------------------------------- finding rules

def _rule_classes(module) -> list[type[Rule]]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__
            and getattr(obj, "rule_id", None)]


def _package_of(directory: Path) -> tuple[Path, str]:
    """(sys.path entry, dotted package name) for a directory of modules: a package
    is named from the highest ancestor that is still a package, so ``rules/builtin``
    is ``rules.builtin`` and its modules are the very ones ``discover`` imported."""
    directory = directory.resolve()
    if not (directory / "__init__.py").exists():
        return directory, ""
    parts = [directory.name]
    root = directory.parent
    while (root / "__init__.py").exists():
        parts.insert(0, root.name)
        root = root.parent
    return root, ".".join(parts)


def rules_in(directory: str | Path) -> Rules:
    """The rules of the modules in ``directory`` (imported as a package if it is one,
    else as top-level modules with the directory on ``sys.path``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RuleConfigError(f"--dir {directory}: no such directory")
    root, package = _package_of(directory)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    found: Rules = {}
    for info in sorted(pkgutil.iter_modules([str(directory)]), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}" if package else info.name)
        for cls in _rule_classes(module):
            found[cls.rule_id] = (cls, f"dir:{_shown(Path(inspect.getfile(cls)))}")
    return found


def all_rules(dirs: list[str] | None = None) -> Rules:
    """``discover()`` plus the rules of each ``--dir``; an id defined twice is an error."""
    found = dict(discover())
    for directory in dirs or ():
        for rule_id, (cls, origin) in rules_in(directory).items():
            if rule_id in found and found[rule_id][0] is not cls:
                raise RuleConfigError(f"{origin} defines rule {rule_id!r}, already defined "
                                      f"by {found[rule_id][1]}")
            found.setdefault(rule_id, (cls, origin))
    return dict(sorted(found.items()))


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory if below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- text helpers

def doc_prose(doc: str | None) -> str:
    """A docstring without its doctest examples (the ``>>>`` lines, their ``...``
    continuations and their expected output), blank lines collapsed."""
    out: list[str] = []
    in_example = False
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_example = True
            continue
        if in_example and stripped:
            continue
        in_example = False
        if stripped or (out and out[-1]):
            out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 100)


def _wrap(text: str, indent: str) -> str:
    return "\n".join(textwrap.fill(para, _width(), initial_indent=indent,
                                   subsequent_indent=indent)
                     for para in text.splitlines() if para.strip())


def _config_of(settings, rules: Rules) -> dict[str, dict]:
    """The config file's ``[rules.*]`` tables, checked as the worker checks them at
    start-up (every problem, naming the file: RuleConfigError)."""
    raw = getattr(settings, "rules", None) or {}
    raise_config_problems(config_problems(raw, rules), getattr(settings, "config_path", None))
    return {rule_id: dict(conf) for rule_id, conf in raw.items()}


def _unknown(ids: list[str], rules: Rules) -> str | None:
    missing = [i for i in ids if i not in rules]
    if not missing:
        return None
    return (f"fundwatch rules: unknown rule id(s) {', '.join(missing)}\n"
            f"known rules: {', '.join(rules)}")


# --------------------------------------------------------------------------- rules list

def list_lines(rules: Rules, config: Mapping[str, Mapping] | None = None,
               config_path: str | None = None) -> list[str]:
    """``rules list``: a line per rule, then its parameters (configured values marked
    with their default), province overrides and whether the config disables it."""
    config = config or {}
    lines = [f"config: {config_path}"] if config_path else []
    id_w = max((len(i) for i in rules), default=0)
    kind_w = max((len(c.subject_kind) for c, _ in rules.values()), default=0)
    origin_w = max((len(o) for _, o in rules.values()), default=0)
    for rule_id, (cls, origin) in rules.items():
        conf = dict(config.get(rule_id, {}))
        lines.append(f"{rule_id:<{id_w}}  {cls.subject_kind:<{kind_w}}  {origin:<{origin_w}}  "
                     f"{cls.description}")
        if conf.get("enabled", True) is False:
            lines.append("    disabled: enabled = false in the config")
        provinces = conf.pop("provinces", {}) or {}
        pairs = []
        for name, param in cls.params.items():
            if name in conf:
                pairs.append(f"{name}={_value(conf[name])} (default {_value(param.default)})")
            else:
                pairs.append(f"{name}={_value(param.default)}")
        if pairs:
            lines.append(textwrap.fill("  ".join(pairs), _width(), initial_indent="    ",
                                       subsequent_indent="    ", break_long_words=False,
                                       break_on_hyphens=False))
        else:
            lines.append("    (no parameters)")
        for province, values in sorted(provinces.items()):
            lines.append(f'    provinces."{province}": '
                         + "  ".join(f"{k}={_value(v)}" for k, v in values.items()))
    return lines


# --------------------------------------------------------------------------- rules explain

def explain_lines(rule_id: str, rules: Rules, config: Mapping[str, Mapping] | None = None
                  ) -> list[str]:
    from rules.fixtures import FixtureError, example_alert, fixture_path, load_fixture

    cls, origin = rules[rule_id]
    module = inspect.getmodule(cls)
    conf = dict((config or {}).get(rule_id, {}))
    provinces = conf.pop("provinces", {}) or {}
    enabled = conf.pop("enabled", True)
    lines = [f"{rule_id} — {cls.description}",
             f"subject: {cls.subject_kind}   state kept per: {cls.key_kind}"
             + (f"   judged from the book: {cls.book}" if cls.book else "")
             + ("   closes periods: yes" if cls.closes() else ""),
             f"from: {origin}   ({_shown(Path(inspect.getfile(cls)))})"]
    if enabled is False:
        lines.append("disabled in the config (enabled = false)")
    lines += ["", "What it detects", _indent(doc_prose(module.__doc__ or cls.__doc__)), "",
              "Parameters"]
    if not cls.params:
        lines.append("  (none)")
    for name, param in cls.params.items():
        bounds = []
        if param.minimum is not None:
            bounds.append(f"minimum {_value(param.minimum)}")
        if param.maximum is not None:
            bounds.append(f"maximum {_value(param.maximum)}")
        head = f"  {name}  {param.type.__name__}, default {_value(param.default)}"
        if bounds:
            head += ", " + ", ".join(bounds)
        if name in conf:
            head += f"; configured {_value(conf[name])}"
        for province, values in sorted(provinces.items()):
            if name in values:
                head += f"; province {province}: {_value(values[name])}"
        lines += [head, _wrap(param.description, "      ")]

    lines += ["", "Fixture"]
    path = fixture_path(cls)
    try:
        fixture = load_fixture(cls)
    except FixtureError as exc:
        lines.append(f"  {exc}")
        return lines
    lines += [_wrap(f"{_shown(path)}: {len(fixture['events'])} events, "
                    f"{len(fixture['expect'])} expected alert(s)"
                    + (f", params {json.dumps(fixture['params'], ensure_ascii=False)}"
                       if fixture.get("params") else ""), "  "),
              _wrap(fixture["description"], "  "), "",
              "Example alert (the fixture through the offline driver)"]
    try:
        alert = example_alert(cls, fixture)
    except Exception as exc:  # noqa: BLE001 - explain what can be explained
        lines.append(f"  the fixture could not be run: {type(exc).__name__}: {exc} "
                     f"(see `fundwatch rules test {rule_id}`)")
        return lines
    lines.append(json.dumps(alert, ensure_ascii=False, indent=2) if alert
                 else "  (the fixture raises no alert)")
    return lines


def markdown_lines(rule_id: str, rules: Rules) -> list[str]:
    """The rule's section as README.md's "Rules" lists it (tests/test_readme.py)."""
    cls, _ = rules[rule_id]
    lines = [f"**`{rule_id}`** ({cls.subject_kind}) — {cls.description.rstrip('.')}.", ""]
    if cls.params:
        lines += ["| parameter | default | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | `{param.default}` | {param.description} |"
                  for name, param in cls.params.items()]
    return lines


def _indent(text: str) -> str:
    return "\n".join(("  " + line) if line else "" for line in text.splitlines())


# --------------------------------------------------------------------------- rules test

def check_rules(ids: list[str], rules: Rules, out=None) -> int:
    """Run the conformance battery on each rule; print PASS/FAIL and the problems;
    return the number of rules that failed."""
    from rules.fixtures import conformance, fixture_path

    out = out or sys.stdout
    failed = 0
    for rule_id in ids:
        cls, _ = rules[rule_id]
        results = conformance(cls)
        problems = [(check, p) for check, found in results.items() for p in found]
        if not problems:
            print(f"PASS {rule_id}", file=out, flush=True)
            continue
        failed += 1
        print(f"FAIL {rule_id}   ({_shown(Path(inspect.getfile(cls)))}, fixture "
              f"{_shown(fixture_path(cls))})", file=out)
        for check, problem in problems:
            first, *rest = problem.splitlines()
            print(f"  [{check}] {first}", file=out)
            for line in rest:
                print(f"      {line}", file=out)
        out.flush()
    passed = len(ids) - failed
    print(f"{passed} passed" + (f", {failed} failed" if failed else ""), file=out)
    return failed


# --------------------------------------------------------------------------- rules new

_TEMPLATE_NAMES = {"Param", "Rule"}


def scaffold_class_name(name: str) -> str:
    cls = "".join(part.capitalize() for part in name.split("_") if part)
    return cls + "Rule" if cls in _TEMPLATE_NAMES else cls


RULE_TEMPLATE = Template('''\
"""${name} — many settlements at one institution in a calendar month.

Scaffolded by ``fundwatch rules new``: a small working rule to make your own.
Say here what the rule detects, how and why — this text (without the examples)
is what ``fundwatch rules explain ${name}`` shows.

As scaffolded it counts each institution's settlements per calendar month
(Asia/Shanghai, event time; reversals, 冲正, are not counted) and raises a warning
when the month's count reaches ``min_settlements`` — the value of the
institution's province where the config overrides it. The alert is updated (same
``alert_id``) as more settlements of the month arrive. The detection core applies
every record once (it remembers the stream positions each state has applied), so
counting is safe under the live path's redeliveries.

>>> from datetime import datetime
>>> from types import SimpleNamespace as E
>>> rule = ${cls}(min_settlements=2)
>>> def visit(i): return E(settlement_id=f"S{i}", institution_id="H440100001",
...     treatment_region="440100", reverses=None, fund_paid_fen=80000,
...     settled_at=datetime.fromisoformat(f"2025-03-0{i}T10:00:00+08:00"))
>>> state, alerts = rule.apply(None, visit(1))
>>> alerts
[]
>>> state, alerts = rule.apply(state, visit(2))
>>> alerts[0]["severity"], alerts[0]["evidence"]["settlement_count"]
('warning', 2)
>>> alerts[0]["evidence"]["fund_paid"], alerts[0]["settlement_ids"]
('1600.00', ['S1', 'S2'])
"""
from __future__ import annotations

from rules.alerts import (MAX_SETTLEMENT_IDS, iso, make_alert, month_of, month_window,
                          previous_month)
from rules.core import Param, Rule
from streams.records import fen_to_yuan_str

# Months kept in state behind the newest one seen: a late settlement within this
# reach still counts; older months are dropped, so the state stays small.
KEEP_MONTHS = 2


class ${cls}(Rule):
    rule_id = "${name}"
    description = "Many settlements at one institution in a calendar month"
    subject_kind = "institution"  # what an alert is about
    key_kind = "institution"  # the key the rule's state is kept per
    params = {
        "min_settlements": Param(int, 200, "settlements of one institution in a calendar "
                                 "month that raise a warning", minimum=1),
    }

    def counts(self, event) -> bool:
        """Which settlements count. Start here: e.g. only inpatient stays
        (``event.visit_type == "inpatient"``), only one diagnosis..."""
        return event.reverses is None

    def wants(self, event):
        # Events this rule ignores are not even sent to it.
        return self.counts(event)

    def apply(self, state, event):
        if not self.counts(event):
            return state, []
        month = month_of(event.settled_at)
        months = dict((state or {}).get("months", {}))
        if months and month < previous_month(max(months), KEEP_MONTHS):
            return state, []  # too late: that month is no longer kept
        entry = months.get(month, {"n": 0, "fen": 0, "ids": [], "last": ""})
        # State is replaced, never mutated (the live driver writes it on assignment).
        entry = {"n": entry["n"] + 1,
                 "fen": entry["fen"] + event.fund_paid_fen,
                 "ids": sorted({*entry["ids"], event.settlement_id})[:MAX_SETTLEMENT_IDS],
                 "last": max(entry["last"], iso(event.settled_at))}
        months[month] = entry
        newest = max(months)
        months = {m: v for m, v in months.items() if m >= previous_month(newest, KEEP_MONTHS)}
        state = {"months": months}

        # Parameters may be overridden per province: the institution's (treatment side).
        minimum = self.param("min_settlements", event.treatment_region[:2])
        if entry["n"] < minimum:
            return state, []
        return state, [make_alert(
            self.rule_id, "warning", "institution", event.institution_id,
            regions=[event.treatment_region],
            window=month_window(month),
            detected_at=entry["last"],
            summary=(f"{event.institution_id}: {entry['n']} settlements in {month} "
                     f"(threshold {minimum}), fund paid ¥{fen_to_yuan_str(entry['fen'])}"),
            evidence={"month": month, "settlement_count": entry["n"],
                      "fund_paid": fen_to_yuan_str(entry["fen"]),
                      "min_settlements": minimum},
            settlement_ids=entry["ids"],
        )]
''')


def _settlement(n: int, institution: str, when: str, visit: str, fund: str,
                total: str) -> dict[str, Any]:
    personal = f"{float(total) - float(fund):.2f}"
    event = {
        "schema": "settlement/v1", "settlement_id": f"FX-{n}",
        "settled_at": f"{when}T10:00:00+08:00", "person_id": f"P{n:04d}",
        "sex": "FM"[n % 2], "age": 30 + n, "insurance_type": "employee",
        "insured_region": "440100", "treatment_region": "440100",
        "institution_id": institution, "institution_type": "hospital",
        "institution_level": 3, "chain_id": None, "visit_type": visit,
        "diagnoses": ["J18.9"], "total_cost": total, "fund_paid": fund,
        "personal_paid": personal, "filing": "none", "reverses": None,
    }
    if visit == "inpatient":
        day = int(when[-2:])
        event["admitted_on"] = f"{when[:-2]}{day - 2:02d}"
        event["discharged_on"] = when
    return event


def scaffold_fixture(name: str) -> dict[str, Any]:
    """The scaffold's fixture: three settlements at one hospital in March make the
    warning (threshold 3 for the fixture); another hospital's single settlement and
    an April one do not."""
    events = [
        _settlement(1, "H440100001", "2025-03-03", "outpatient", "120.00", "200.00"),
        _settlement(2, "H440100001", "2025-03-10", "inpatient", "6400.00", "8000.00"),
        _settlement(3, "H440100002", "2025-03-12", "outpatient", "90.00", "150.00"),
        _settlement(4, "H440100001", "2025-03-17", "outpatient", "150.00", "250.00"),
        _settlement(5, "H440100001", "2025-04-02", "outpatient", "60.00", "100.00"),
    ]
    return {
        "description": "Three settlements at one hospital in March reach the fixture's "
                       "threshold of 3: a warning for March. Another hospital's single "
                       "settlement and an April settlement raise nothing.",
        "params": {"min_settlements": 3},
        "events": events,
        "expect": [{
            "rule_id": name, "severity": "warning",
            "subject": {"kind": "institution", "id": "H440100001"},
            "regions": ["440100"], "review": "single",
            "window": {"start": "2025-03-01T00:00:00+08:00",
                       "end": "2025-04-01T00:00:00+08:00"},
            "detected_at": "2025-03-17T10:00:00+08:00",
            "evidence": {"month": "2025-03", "settlement_count": 3, "fund_paid": "6670.00",
                         "min_settlements": 3},
            "settlement_ids": ["FX-1", "FX-2", "FX-4"],
        }],
    }


def check_new_name(name: str, rules: Rules) -> str | None:
    """Why ``name`` cannot be a new rule, or None."""
    from rules.fixtures import RULE_ID

    if not RULE_ID.fullmatch(name):
        return (f"{name!r} is not a valid rule name: lower-case letters, digits and _, "
                f"starting with a letter, 3 to 64 characters ({RULE_ID.pattern})")
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword: it cannot name a module"
    if name in rules:
        return f"a rule {name!r} already exists ({rules[name][1]})"
    return None


def new_rule(name: str, directory: Path) -> list[Path]:
    """Write ``NAME.py`` and ``NAME.fixture.json`` into ``directory`` (created as a
    package if it does not exist); refuse to overwrite anything."""
    from streams.records import parse

    module = directory / f"{name}.py"
    fixture_file = directory / f"{name}.fixture.json"
    existing = [p for p in (module, fixture_file) if p.exists()]
    if existing:
        raise FileExistsError(", ".join(str(p) for p in existing))
    fixture = scaffold_fixture(name)
    for event in fixture["events"]:
        parse(json.dumps(event))  # the scaffold's own events are valid settlement/v1
    written = []
    if not directory.exists():
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text(
            '"""Detection rules for fundwatch (see docs/adding_a_rule.md)."""\n',
            encoding="utf-8")
        written.append(directory / "__init__.py")
    module.write_text(RULE_TEMPLATE.substitute(name=name, cls=scaffold_class_name(name)),
                      encoding="utf-8")
    fixture_file.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n",
                            encoding="utf-8")
    return written + [module, fixture_file]


# --------------------------------------------------------------------------- the CLI

def add_parser(sub) -> None:
    """Register ``fundwatch rules`` and its subcommands on the main parser's subparsers."""
    p = sub.add_parser("rules", help="list, explain, test and scaffold detection rules")
    rules_sub = p.add_subparsers(dest="rules_command", required=True)
    dir_help = ("also the rules of the modules in this directory (a package of your own); "
                "may be repeated")

    q = rules_sub.add_parser("list", help="every rule, its origin and parameters "
                             "(as configured by FUNDWATCH_CONFIG)")
    q.add_argument("--dir", action="append", default=[], metavar="DIR", help=dir_help)

    q = rules_sub.add_parser("explain", help="what a rule detects, its parameters and an "
                             "example alert")
    q.add_argument("rule_id", metavar="ID")
    q.add_argument("--markdown", action="store_true",
                   help="print the rule's section for README.md instead")
    q.add_argument("--dir", action="append", default=[], metavar="DIR", help=dir_help)

    q = rules_sub.add_parser("test", help="run the rules' fixtures and the conformance "
                             "checks; exit 1 if any fails")
    q.add_argument("rule_ids", nargs="*", metavar="ID", help="default: every rule")
    q.add_argument("--dir", action="append", default=[], metavar="DIR", help=dir_help)

    q = rules_sub.add_parser("new", help="scaffold a rule and its fixture")
    q.add_argument("name", metavar="NAME", help="the rule id and module name")
    q.add_argument("--dir", metavar="DIR", help="write into this directory (created as a "
                   "package if missing) instead of rules/builtin")

    q = rules_sub.add_parser("events", help="a rule's fixture events as JSON lines "
                             "(input for fundwatch replay)")
    q.add_argument("rule_id", metavar="ID")
    q.add_argument("--out", help="write to this file (default: standard output)")
    q.add_argument("--pools-out", metavar="FILE",
                   help="also write the fixture's pool registry (pools/v1 YAML), if it has one")
    q.add_argument("--dir", action="append", default=[], metavar="DIR", help=dir_help)


def run(args, settings) -> int:
    """Dispatch ``fundwatch rules ...``; configuration errors propagate to the CLI."""
    try:
        return _dispatch(args, settings)
    except BrokenPipeError:  # `fundwatch rules list | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args, settings) -> int:
    # ``rules new --dir`` names where to write (it may not exist yet); the others
    # name directories of rules to load.
    dirs = [] if args.rules_command == "new" else args.dir
    try:
        rules = all_rules(dirs)
    except RuleConfigError:
        raise
    except Exception:  # noqa: BLE001 - a rule module that does not import: show where
        print("fundwatch rules: a rule module could not be loaded:\n"
              + traceback.format_exc(limit=-3), file=sys.stderr)
        return 2
    command = args.rules_command
    if command == "list":
        config = _config_of(settings, rules)
        for line in list_lines(rules, config, settings.config_path):
            print(line)
        return 0
    if command == "explain":
        problem = _unknown([args.rule_id], rules)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        lines = (markdown_lines(args.rule_id, rules) if args.markdown
                 else explain_lines(args.rule_id, rules, _config_of(settings, rules)))
        for line in lines:
            print(line)
        return 0
    if command == "test":
        problem = _unknown(args.rule_ids, rules)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return 1 if check_rules(args.rule_ids or list(rules), rules) else 0
    if command == "new":
        return _new(args.name, args.dir, rules)
    if command == "events":
        return _events(args, rules)
    raise AssertionError(command)


def _new(name: str, directory: str | None, rules: Rules) -> int:
    if directory and Path(directory).is_dir():
        rules = {**rules, **rules_in(directory)}  # names taken there too
    problem = check_new_name(name, rules)
    if problem:
        print(f"fundwatch rules new: {problem}", file=sys.stderr)
        return 2
    if directory:
        target = Path(directory)
    else:
        from rules import builtin

        target = Path(builtin.__path__[0])
    try:
        written = new_rule(name, target)
    except FileExistsError as exc:
        print(f"fundwatch rules new: will not overwrite {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"created {_shown(path)}")
    where = f" --dir {directory}" if directory else ""
    print(f"next: edit them, then `fundwatch rules test {name}{where}` "
          f"(see docs/adding_a_rule.md)")
    return 0


def _events(args, rules: Rules) -> int:
    import orjson

    from rules.fixtures import FixtureError, load_fixture

    problem = _unknown([args.rule_id], rules)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        fixture = load_fixture(rules[args.rule_id][0])
    except FixtureError as exc:
        print(f"fundwatch rules events: {exc}", file=sys.stderr)
        return 2
    data = b"".join(orjson.dumps(event) + b"\n" for event in fixture["events"])
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"{len(fixture['events'])} events: {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    if args.pools_out:
        if "registry" not in fixture:
            print(f"fundwatch rules events: the fixture of {args.rule_id} has no registry",
                  file=sys.stderr)
            return 2
        import yaml

        Path(args.pools_out).write_text(yaml.safe_dump(fixture["registry"],
                                                       allow_unicode=True, sort_keys=False),
                                        encoding="utf-8")
        print(f"pool registry: {args.pools_out}", file=sys.stderr)
    return 0
