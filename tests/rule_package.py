"""A province's rule package, installed the way pip would: a ``*.dist-info`` beside
the package in a site directory, declaring its modules in the entry point group
``fundwatch.rules``. Put the site directory on ``PYTHONPATH`` (a child process) or
``sys.path`` (this one) and ``rules.core.discover`` finds the rules there."""
from __future__ import annotations

from pathlib import Path


def declare_entry_points(site: Path, package: Path, rule_names: list[str]) -> None:
    """Make ``package`` (a directory in ``site``) an installed distribution whose
    modules ``rule_names`` are ``fundwatch.rules`` entry points."""
    dist = site / f"{package.name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.name}\n"
                                   "Version: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[fundwatch.rules]\n" + "".join(f"{name} = {package.name}.{name}\n"
                                        for name in rule_names), encoding="utf-8")
