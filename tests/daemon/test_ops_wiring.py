"""The operations pieces wired into the running daemon: the HTTP endpoint (health, metrics,
status, logs), per-claim metrics, device health and CPU hotplug from real kernel uevents over a
sysfs overlay. grpcio plays the kubelet, the in-memory fake API server holds claims and slices."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from dracpu.core.cpuset import CpuSet
from dracpu.daemon.health import device_health
from dracpu.kubelet import Health
from dracpu.logs import RecentLines
from tests.daemon.support import (
    KERNEL_UEVENT,
    NODE,
    GrpcioApi,
    claim,
    dra_api,
    grouped,
    kernel_uevent,
    set_online,
    short_dir,
    slice_cpus,
    write_machine,
)
from tests.daemon.test_daemon import Running, start
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import write_kubeconfig
from tests.kube.waiting import wait_for


@pytest.fixture
async def env() -> AsyncIterator[tuple[Path, FakeApiServer]]:
    with short_dir("do-") as root:
        write_machine(root)
        write_kubeconfig(root / "kubeconfig", 1)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        yield root, fake


@pytest.fixture(scope="module")
def api() -> GrpcioApi:
    return dra_api("v1")


async def get(running: Running, path: str) -> httpx.Response:
    await wait_for(lambda: bool(running.daemon.endpoint_addresses), 10)
    port = running.daemon.endpoint_addresses[0].rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        return await client.get(path)


def sample(text: str, name: str) -> float:
    """The value of one series line ``name`` (with its labels) in an exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")


async def test_endpoint_health_metrics_status(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, reserved_cpus=CpuSet.parse("0"))
    # No kubelet confirmed the registration and no NRI/cgroup enforcer runs: 503 naming both.
    health = await get(r, "/healthz")
    assert health.status_code == 503
    assert "kubelet-registration: not registered yet" in health.text
    assert "enforcement:" in health.text
    ready = await get(r, "/readyz")
    assert ready.status_code == 503
    assert "enforcement" not in ready.text
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 4)]))
    response = await r.call(api, "prepare", "u1", "missing")
    assert response.claims["u1"].error == ""
    assert response.claims["missing"].error != ""
    await r.call(api, "unprepare", "missing")
    scrape = (await get(r, "/metrics")).text
    assert sample(scrape, 'dra_cpu_prepare_claims_total{result="success"}') == 1
    assert sample(scrape, 'dra_cpu_prepare_claims_total{result="error"}') == 1
    assert sample(scrape, 'dra_cpu_unprepare_claims_total{result="success"}') == 1
    assert sample(scrape, "dra_cpu_allocated_cpus") == 4
    assert sample(scrape, "dra_cpu_reserved_cpus") == 1
    assert sample(scrape, "dra_cpu_available_cpus") == 11
    assert sample(scrape, "dra_cpu_resource_claims_active") == 1
    assert sample(scrape, 'dra_cpu_claim_allocated_cpus_bucket{le="4.0"}') == 1
    assert sample(scrape, "dracpu_checkpoint_write_duration_seconds_count") >= 1
    assert sample(scrape, 'dracpu_resourceslice_writes_total{verb="create"}') >= 1
    assert sample(scrape, "dracpu_cgroup_fallback_active") == 0
    status = (await get(r, "/status")).json()
    assert [c["uid"] for c in status["claims"]] == ["u1"]
    assert status["hotplug"]["topologyChanges"] == 0
    assert status["enforcement"] == "none"
    assert status["endpoint"] == r.daemon.endpoint_addresses
    # /logs serves the daemon's RecentLines ring (`dracpu run` installs it on the root logger).
    recent = RecentLines()
    r.daemon.recent_logs = recent
    recent.handle(
        logging.LogRecord("dracpu.x", logging.INFO, __file__, 1, "hello %s", ("ops",), None)
    )
    assert "hello ops" in (await get(r, "/logs")).text
    r.scope.cancel()


async def test_claim_on_an_offline_cpu_is_reported_unhealthy(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma001", 8)]))  # all of NUMA 1: 4-7,12-15
    assert (await r.call(api, "prepare", "u1")).claims["u1"].error == ""
    set_online(root, "0-4,6-15", cpu=5, online=False)
    await r.daemon._on_cpu_events(())
    health = {d.device_name: d for d in device_health(r.daemon.owner.state)}
    assert health["cpudevnuma001"].health is Health.UNHEALTHY
    assert "claim ns/claim-u1" in health["cpudevnuma001"].message
    assert "CPUs 5" in health["cpudevnuma001"].message
    assert health["cpudevnuma000"].health is Health.HEALTHY
    # The board the kubelet's health stream reads has it too; the claim was not moved.
    board = {d.device_name: d.health for d in r.daemon.health.devices}
    assert board["cpudevnuma001"] is Health.UNHEALTHY
    assert r.daemon.owner.state.claims["u1"].cpus == CpuSet.parse("4-7,12-15")
    r.scope.cancel()


def pool_generation(fake: FakeApiServer) -> int:
    return max(o["spec"]["pool"]["generation"] for o in fake.objects["resourceslices"].values())


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(KERNEL_UEVENT, os.W_OK),
    reason="needs root to make the kernel emit a CPU uevent (write to cpu0/uevent)",
)
async def test_hotplug_from_real_uevents(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    await wait_for(lambda: r.daemon.hotplug != "starting", 10)
    if r.daemon.hotplug != "listening":
        pytest.skip(f"kernel uevents unavailable here: {r.daemon.hotplug}")
    await wait_for(r.daemon.publisher.in_sync.is_set, 10)
    assert slice_cpus(fake, "cpudevnuma001") == 8
    generation = pool_generation(fake)
    # CPU 5 goes offline in the overlay; the kernel's uevent makes the daemon re-read it.
    set_online(root, "0-4,6-15", cpu=5, online=False)
    # (How fast: `just bench-hotplug`; this checks only that it happens.)
    await trio.to_thread.run_sync(kernel_uevent)
    await wait_for(lambda: slice_cpus(fake, "cpudevnuma001") == 7, 5)
    assert pool_generation(fake) > generation
    # An offline CPU is never handed out.
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma001", 7)]))
    response = await r.call(api, "prepare", "u1")
    assert response.claims["u1"].error == ""
    assert r.daemon.owner.state.claims["u1"].cpus == CpuSet.parse("4,6-7,12-15")
    await r.call(api, "unprepare", "u1")
    # CPU 5 comes back and is offered again.
    set_online(root, "0-15", cpu=5, online=True)
    await trio.to_thread.run_sync(kernel_uevent)
    await wait_for(lambda: slice_cpus(fake, "cpudevnuma001") == 8, 5)
    r.put_claim(claim("u2", [grouped("req", "cpudevnuma001", 8)]))
    response = await r.call(api, "prepare", "u2")
    assert response.claims["u2"].error == ""
    assert 5 in r.daemon.owner.state.claims["u2"].cpus
    assert r.daemon.topology_changes == 2
    r.scope.cancel()


async def test_gather_command_against_the_running_daemon(
    nursery: trio.Nursery,
    env: tuple[Path, FakeApiServer],
    api: GrpcioApi,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dracpu.cli import main

    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    assert (await r.call(api, "prepare", "u1")).claims["u1"].error == ""
    await wait_for(lambda: bool(r.daemon.endpoint_addresses), 10)
    port = r.daemon.endpoint_addresses[0].rsplit(":", 1)[1]
    out = root / "out"
    argv = [
        "gather",
        f"--state-dir={root / 'state'}",
        f"--cdi-dir={root / 'cdi'}",
        f"--sysfs-root={root / 'sys'}",
        f"--endpoint=http://127.0.0.1:{port}",
        f"--node-name={NODE}",
        f"--output-dir={out}",
    ]
    assert await trio.to_thread.run_sync(main, argv) == 0
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in tar.getnames()}
        errors = tar.extractfile(next(n for n in tar.getnames() if n.endswith("errors.txt")))
        assert errors is not None
        error_text = errors.read().decode()
    assert {"status.json", "metrics.txt", "topology.yaml", "state/checkpoint.json"} <= names
    assert any(n.startswith("cdi/dra.k8s.io-cpu_") for n in names)
    assert "status.json" not in error_text
    assert "slices.json: no API server config given" in error_text
    # `dracpu status --endpoint` reads the same document from the endpoint.
    status_argv = ["status", "--json", f"--endpoint=http://127.0.0.1:{port}"]
    status_argv.append(f"--state-dir={root / 'nowhere'}")  # no socket there: endpoint only
    capsys.readouterr()
    assert await trio.to_thread.run_sync(main, status_argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["uid"] for c in printed["claims"]] == ["u1"]
    r.scope.cancel()


async def test_node_allocatable_mapping_and_restart_metric(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], caplog: pytest.LogCaptureFixture
) -> None:
    from dracpu.backoff import Backoff
    from dracpu.daemon.run import supervise

    root, fake = env
    r = await start(nursery, root, fake, publish_node_allocatable_resource_mapping=True)
    await wait_for(r.daemon.publisher.in_sync.is_set, 10)
    devices = [d for o in fake.objects["resourceslices"].values() for d in o["spec"]["devices"]]
    assert devices
    assert all("nodeAllocatableResources" in d for d in devices)

    # A failing member is counted by the supervisor's callback, labelled by the member.
    async def broken() -> None:
        raise RuntimeError("boom")

    with trio.move_on_after(0.5):
        await supervise(
            lambda: [("broken member", broken)],
            Backoff(initial=0.05, maximum=0.05),
            r.daemon._record_failure,
        )
    scrape = (await get(r, "/metrics")).text
    assert sample(scrape, 'dracpu_supervised_group_restarts_total{reason="broken member"}') >= 2
    r.scope.cancel()


async def test_claim_log_lines_carry_fields(
    nursery: trio.Nursery,
    env: tuple[Path, FakeApiServer],
    api: GrpcioApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("u9", [grouped("req", "cpudevnuma000", 2)]))
    with caplog.at_level(logging.INFO, logger="dracpu.daemon.handler"):
        assert (await r.call(api, "prepare", "u9")).claims["u9"].error == ""
    lines = [rec for rec in caplog.records if rec.name == "dracpu.daemon.handler"]
    assert lines
    found = dict(getattr(lines[-1], "dracpu_fields", {}))
    # The prepare's wall time rides along (load tests read per-claim latencies from it).
    seconds = found.pop("seconds")
    assert isinstance(seconds, float), seconds
    assert 0 < seconds < 5, seconds
    assert found == {"claim": "u9", "name": "ns/claim-u9"}
    r.scope.cancel()


async def test_unprepare_of_a_malformed_reference_removes_no_metadata_outside(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    from dracpu.kubelet import handler as kh

    root, fake = env
    r = await start(nursery, root, fake)
    victim = root / "kubelet" / "plugins" / "victim"
    victim.mkdir(parents=True)
    (root / "kubelet" / "plugins" / "dra.cpu" / "dra-device-metadata" / "ns_a").mkdir(parents=True)
    # ns_a/.. is the metadata dir, then dra.cpu, then plugins: a path trick aimed at victim.
    ref = kh.ClaimRef("ns", "a/../../../victim", "u1")
    results = await r.daemon.handler().unprepare([ref])
    assert victim.is_dir()
    assert not isinstance(results["u1"], kh.ClaimFailed)
    r.scope.cancel()


async def test_a_taken_port_does_not_restart_the_group(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    r = await start(nursery, root, fake, bind_address=f"127.0.0.1:{port}")
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    assert (await r.call(api, "prepare", "u1")).claims["u1"].error == ""
    await trio.sleep(0.3)
    assert r.daemon.restarts == 0
    assert r.daemon.endpoint_addresses == []
    taken.close()  # The port comes free: the endpoint's own retry binds it.
    await wait_for(lambda: bool(r.daemon.endpoint_addresses), 10)
    assert (await get(r, "/readyz")).status_code == 503
    assert r.daemon.restarts == 0
    r.scope.cancel()
