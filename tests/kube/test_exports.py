"""The public surface of dracpu.kube is explicit: every exported name exists, once."""

from __future__ import annotations

import importlib

import pytest

import dracpu.kube

MODULES = [
    "claims",
    "client",
    "config",
    "errors",
    "publisher",
    "resources",
    "shape",
    "watch",
]


def test_package_exports_resolve_and_are_unique() -> None:
    names = dracpu.kube.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(dracpu.kube, name) is not None


@pytest.mark.parametrize("module", MODULES)
def test_module_all_lists_existing_names(module: str) -> None:
    mod = importlib.import_module(f"dracpu.kube.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"dracpu.kube.{module}.__all__ names missing {name}"


def test_every_error_derives_from_the_one_root() -> None:
    from dracpu.errors import DracpuError, KubeApiError
    from dracpu.kube import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, KubeApiError), name
            assert issubclass(obj, DracpuError), name
