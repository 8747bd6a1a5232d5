"""Every example in a docstring runs (River's habit: documentation that is tested)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["streams", "rules", "sinks", "infra", "detectors"]


def _modules():
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield name
        for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
            yield info.name


# The test support whose examples say how it reads what it reads.
MODULES = sorted(set(_modules()) | {"tests.kafka_requests"})


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} example(s) failed in {module_name}"
