"""The README documents every rule's parameters as the code declares them: a rule
added or a default changed without its table updated fails here."""
from __future__ import annotations

from pathlib import Path

import pytest

from rules.core import discover

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("rule_id", sorted(discover()))
def test_readme_documents_the_rule_and_its_parameters(rule_id):
    cls, _ = discover()[rule_id]
    assert f"**`{rule_id}`**" in README, f"README: add a section for {rule_id}"
    for name, param in cls.params.items():
        row = f"| `{name}` | `{param.default}` | {param.description} |"
        assert row in README, f"README: the row for {rule_id}.{name} should read\n{row}"
