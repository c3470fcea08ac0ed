"""The examples in runtime's and compiler's docstrings run, and say what they show: an
example nobody runs drifts from the code (two had, unseen)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import aigw.compiler
import aigw.runtime


def _modules() -> list[str]:
    names: list[str] = []
    for package in (aigw.compiler, aigw.runtime):
        names.append(package.__name__)
        names.extend(info.name for info in pkgutil.walk_packages(
            package.__path__, prefix=package.__name__ + "."))
    return sorted(names)


MODULES = [name for name in _modules() if any(
    test.examples for test in doctest.DocTestFinder().find(importlib.import_module(name)))]


def test_there_are_examples_to_run() -> None:
    assert len(MODULES) >= 30, MODULES  # a package renamed would leave none, and pass


@pytest.mark.parametrize("name", MODULES)
def test_a_modules_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False, report=False,
                             optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail"
