"""The node core's public surface is explicit: every name in ``__all__`` exists, once, and every
public class or function a module defines is exported (so the daemon's imports stay stable).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = ["dracpu.core.cdi", "dracpu.core.claims", "dracpu.core.node", "dracpu.core.pinning"]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_complete_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(module, attr), attr
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "") == name
    }
    assert defined <= set(exported), sorted(defined - set(exported))
