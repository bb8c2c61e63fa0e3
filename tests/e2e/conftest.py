"""Fixtures for end-to-end tests against the real-component rig (see docs/e2e.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dracpu.core.memory_slices import device_classes
from dracpu.sysfs_memory import read_memory
from tests.e2e.dra_driver import (
    DracpuDaemon,
    DraDriver,
    DriverCommand,
    DriverFactory,
    daemon_argv,
    plugin_argv,
)
from tests.e2e.kube import RESOURCE, Created, kube_client
from tests.e2e.rig import Rig, current, rig_is_up

DRIVER = "dra.cpu"


@pytest.fixture(scope="session")
def rig() -> Rig:
    """The running rig's locations; skips when it is down (CI always brings it up)."""
    r = current()
    if not rig_is_up(r):
        pytest.skip("rig not running: run `just rig-up`")
    return r


@pytest.fixture
def kube(rig: Rig) -> Iterator[httpx.Client]:
    """An httpx client for the rig's apiserver, authenticated as the rig admin."""
    with kube_client(rig) as client:
        yield client


@pytest.fixture
def dra_driver_command() -> DriverCommand:
    """How to start a DRA driver. Today the test plugin (tests/e2e/dra_plugin.py); swap in
    ``dracpu run ...`` here once the daemon exists."""
    return plugin_argv


@pytest.fixture
def dra_driver_factory(
    rig: Rig, tmp_path: Path, dra_driver_command: DriverCommand
) -> Iterator[DriverFactory]:
    """Start DRA driver processes (``factory(devices=2, fail_prepare=0)``, or the daemon:
    ``factory(daemon=True, cpu_device_mode="individual", state_dir=...)``); all are stopped at
    the end, after the pods (the ``created`` fixture depends on this one)."""
    started: list[DraDriver] = []

    def factory(*, daemon: bool = False, state_dir: Path | None = None, **opts: Any) -> DraDriver:
        n = len(started)
        if daemon:
            state = state_dir or tmp_path / f"dracpu-{n}.state"
            log = tmp_path / f"dracpu-{n}.log"
            drv: DraDriver = DracpuDaemon(rig, daemon_argv(rig, state, **opts), log, state)
            started.append(drv)
            return drv.start()
        calls = tmp_path / f"driver-{n}.calls.jsonl"
        argv = dra_driver_command(rig, calls, driver=DRIVER, **opts)
        drv = DraDriver(rig, argv, calls, tmp_path / f"driver-{n}.log", DRIVER)
        started.append(drv)
        return drv.start()

    try:
        yield factory
    finally:
        for drv in started:
            drv.stop()


@pytest.fixture
def dra_driver(dra_driver_factory: DriverFactory) -> DraDriver:
    """The DRA driver ``dra.cpu`` registered with the kubelet, publishing cpu0 and cpu1."""
    return dra_driver_factory()


@pytest.fixture
def created(kube: httpx.Client, dra_driver_factory: DriverFactory) -> Iterator[Created]:
    """Objects made by the test; pods are deleted through the kubelet before drivers stop."""
    c = Created(kube)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def device_class(created: Created) -> str:
    """A DeviceClass of its own selecting the ``dra.cpu`` driver's devices."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    created.post(
        f"{RESOURCE}/deviceclasses",
        {
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        },
    )
    return name


@pytest.fixture
def dracpu_daemon_factory(dra_driver_factory: DriverFactory) -> Callable[..., DracpuDaemon]:
    """Start ``dracpu run`` as the node's DRA driver (flags as keywords, see
    :func:`tests.e2e.dra_driver.daemon_argv`); stopped after the test's pods are gone."""

    def factory(**opts: Any) -> DracpuDaemon:
        drv = dra_driver_factory(daemon=True, **opts)
        assert isinstance(drv, DracpuDaemon)
        return drv

    return factory


@pytest.fixture
def dracpu_class(created: Created, kube: httpx.Client) -> str:
    """The chart's DeviceClass ``dra.cpu`` (deploy/helm/dracpu/templates/deviceclass.yaml), which
    upstream's example claims name; made here unless the deployed chart already has it."""
    path = f"{RESOURCE}/deviceclasses/dra.cpu"
    if kube.get(path).status_code == 404:
        created.post(
            f"{RESOURCE}/deviceclasses",
            {
                "metadata": {"name": "dra.cpu"},
                "spec": {"selectors": [{"cel": {"expression": 'device.driver == "dra.cpu"'}}]},
            },
        )
    return "dra.cpu"


@pytest.fixture
def dracpu_memory_classes(created: Created, kube: httpx.Client) -> list[str]:
    """The memory driver's DeviceClasses (``dra.memory``, ``dra.hugepages-2m``, ...) for this
    machine, as ``dracpu inspect memory`` prints them; made here unless already installed."""
    names = []
    for doc in device_classes(read_memory()):
        name = doc["metadata"]["name"]
        if kube.get(f"{RESOURCE}/deviceclasses/{name}").status_code == 404:
            created.post(f"{RESOURCE}/deviceclasses", {k: doc[k] for k in ("metadata", "spec")})
        names.append(name)
    return names
