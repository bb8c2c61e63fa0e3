"""The memory modules' public names exist, once each."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "dracpu.core.hugepage_provision",
    "dracpu.core.memory",
    "dracpu.core.memory_prepare",
    "dracpu.core.memory_slices",
    "dracpu.core.quantity",
    "dracpu.hugepages",
    "dracpu.memory_cli",
    "dracpu.sysfs_memory",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert getattr(module, attr) is not None
