"""The daemon in-process: grpcio plays the kubelet against the real sockets, the fake API
server (in memory) holds the claims; prepare/unprepare in every mode and every per-claim error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core.cpuset import CpuSet
from dracpu.core.slices import DeviceMode, GroupBy
from dracpu.daemon.run import Daemon, build_daemon, run_daemon
from dracpu.daemon.status import read_status
from tests.daemon.support import (
    NODE,
    GrpcioApi,
    claim,
    dra_api,
    grouped,
    individual,
    kubelet_call,
    opaque,
    run_config,
    short_dir,
    write_machine,
)
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import write_kubeconfig
from tests.kube.waiting import wait_for

SCHEMA = json.loads((Path(__file__).parents[1] / "support" / "cdi_schema.json").read_text())


@pytest.fixture(scope="module", params=["v1", "v1beta1"])
def api(request: pytest.FixtureRequest) -> GrpcioApi:
    return dra_api(request.param)


@dataclass
class Running:
    daemon: Daemon
    fake: FakeApiServer
    root: Path
    scope: trio.CancelScope

    @property
    def dra_socket(self) -> Path:
        assert self.daemon.plugin_config is not None
        return self.daemon.plugin_config.paths().dra_socket

    def put_claim(self, obj: dict[str, Any]) -> None:
        self.fake.put_object("resourceclaims", obj)

    async def call(self, api: GrpcioApi, op: str, *uids: str) -> Any:
        return await kubelet_call(self.dra_socket, api, op, [("ns", f"claim-{u}", u) for u in uids])

    def cdi(self) -> CdiDir:
        return CdiDir(self.daemon.config.cdi_dir)


async def start(
    nursery: trio.Nursery, root: Path, fake: FakeApiServer, **overrides: Any
) -> Running:
    config = run_config(
        root,
        nri_socket=overrides.pop("nri_socket", root / "nri.sock"),
        cgroup_root=overrides.pop("cgroup_root", root / "cgroup"),
        release_grace_period=overrides.pop("release_grace_period", 0.0),
        bind_address=overrides.pop("bind_address", "127.0.0.1:0"),
        **overrides,
    )
    daemon = build_daemon(config, hostname=lambda: NODE, transport=fake.transport, env={})
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await run_daemon(daemon)

    nursery.start_soon(run)
    running = Running(daemon, fake, root, scope)
    # The registration socket appears once the DRA socket listens.
    registration = (
        daemon.plugin_config.paths().registration_socket if daemon.plugin_config else None
    )
    assert registration is not None
    await wait_for(registration.exists, 10)
    return running


@pytest.fixture
async def env() -> AsyncIterator[tuple[Path, FakeApiServer]]:
    with short_dir("dd-") as root:
        write_machine(root)
        write_kubeconfig(root / "kubeconfig", 1)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        yield root, fake


def cpus_of(response: Any, uid: str, running: Running) -> CpuSet:
    assert response.claims[uid].error == ""
    found = running.cdi().read_all()[uid]
    assert found is not None
    doc = json.loads(running.cdi().path(uid).read_text())
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft7Validator)
    return found


async def test_grouped_prepare_unprepare(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, reserved_cpus=CpuSet.parse("0"))
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 4)]))
    r.put_claim(claim("u2", [grouped("a", "cpudevnuma000", 2), grouped("b", "cpudevnuma001", 2)]))
    response = await r.call(api, "prepare", "u1", "u2")
    one, two = cpus_of(response, "u1", r), cpus_of(response, "u2", r)
    numa0, numa1 = CpuSet.parse("0-3,8-11"), CpuSet.parse("4-7,12-15")
    assert len(one) == 4
    assert one <= numa0
    assert 0 not in one
    assert len(two) == 4
    assert len(two & numa0) == len(two & numa1) == 2
    assert one.isdisjoint(two)
    devices = response.claims["u2"].devices
    assert [(d.device_name, list(d.request_names)) for d in devices] == [
        ("cpudevnuma000", ["a"]),
        ("cpudevnuma001", ["b"]),
    ]
    # The claim's CDI device, then its request's KEP-5304 metadata device (on by default).
    assert list(devices[0].cdi_device_ids) == ["dra.k8s.io/cpu=claim-u2", "dra.cpu/metadata=u2_a"]
    assert list(devices[1].cdi_device_ids) == ["dra.k8s.io/cpu=claim-u2", "dra.cpu/metadata=u2_b"]
    meta_dir = root / "kubelet" / "plugins" / "dra.cpu" / "dra-device-metadata" / "ns_claim-u2"
    meta = json.loads((meta_dir / "a" / "metadata.json").read_text())
    (entry,) = meta["requests"][0]["devices"]
    assert entry["name"] == "cpudevnuma000"
    assert entry["attributes"]["dra.cpu/allocatedNumCPUs"] == {"int": 2}
    assert entry["attributes"]["dra.cpu/numaNodeID"] == {"int": 0}
    mount = json.loads((root / "cdi" / "dra.cpu_metadata_u2_a.json").read_text())
    assert mount["devices"][0]["containerEdits"]["mounts"][0]["hostPath"] == str(
        meta_dir / "a" / "metadata.json"
    )
    # The checkpoint holds both; a retry of the same batch gets the same CPUs.
    body = CheckpointStore(root / "state").load().body
    assert body is not None
    assert {c["uid"]: c["cpus"] for c in body["claims"]} == {"u1": str(one), "u2": str(two)}
    again = await r.call(api, "prepare", "u2", "u1")
    assert cpus_of(again, "u1", r) == one
    assert cpus_of(again, "u2", r) == two
    # Users see their CPUs in the claim status (written in the background).
    await wait_for(
        lambda: not (r.daemon.status_writer.pending or r.daemon.status_writer.written < 2), 5
    )
    stored = fake.objects["resourceclaims"]["ns/claim-u1"]
    assert stored["status"]["devices"][0]["data"]["cpuset"] == str(one)
    # Status over the socket.
    status = await trio.to_thread.run_sync(read_status, root / "state")
    assert status["daemon"] == "up"
    assert {c["uid"] for c in status["claims"]} == {"u1", "u2"}
    assert status["sharedPool"] == str(CpuSet.parse("0-15") - one - two)
    # Unprepare: CDI specs gone, CPUs back, unknown claims succeed.
    response = await r.call(api, "unprepare", "u1", "u2", "never")
    assert all(response.claims[u].error == "" for u in ("u1", "u2", "never"))
    assert r.cdi().read_all() == {}
    assert r.daemon.owner.state.claims == {}
    assert not meta_dir.exists()
    assert list((root / "cdi").glob("dra.cpu_metadata_*")) == []
    r.scope.cancel()


async def test_device_metadata_can_be_turned_off(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, device_metadata=False)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    response = await r.call(api, "prepare", "u1")
    assert list(response.claims["u1"].devices[0].cdi_device_ids) == ["dra.k8s.io/cpu=claim-u1"]
    assert not (root / "kubelet" / "plugins" / "dra.cpu" / "dra-device-metadata").exists()
    r.scope.cancel()


async def test_individual_mode(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, cpu_device_mode=DeviceMode.INDIVIDUAL)
    devices = r.daemon.owner.state.devices
    r.put_claim(claim("u1", [individual("req", "cpudev000"), individual("req", "cpudev001")]))
    response = await r.call(api, "prepare", "u1")
    assert cpus_of(response, "u1", r) == devices["cpudev000"] | devices["cpudev001"]
    # A device already held by another claim is a stale allocation.
    r.put_claim(claim("u2", [individual("req", "cpudev001")]))
    response = await r.call(api, "prepare", "u2")
    assert "u2" in response.claims["u2"].error
    r.scope.cancel()


async def test_machine_mode_with_opaque_cpuset(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, group_by=GroupBy.MACHINE)
    r.put_claim(
        claim(
            "u1",
            [grouped("req", "cpudevmachine", 3)],
            config=[opaque(["req"], {"cpuset": "5-7"})],
        )
    )
    response = await r.call(api, "prepare", "u1")
    assert cpus_of(response, "u1", r) == CpuSet.parse("5-7")
    r.scope.cancel()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (claim("u9", [grouped("req", "cpudevnuma000", "1500m")]), "not a whole number of CPUs"),
        (claim("u9", [grouped("req", "cpudevnuma000", 9)]), "u9"),
        (
            claim(
                "u9",
                [grouped("req", "cpudevnuma000", 2)],
                config=[opaque(["req"], {"cpuset": "1-2", "bogus": True})],
            ),
            "unknown field cpuConfig.bogus",
        ),
        (
            claim(
                "u9",
                [grouped("req", "cpudevnuma000", 2)],
                config=[{**opaque(["req"], {"cpuset": "1-2"}), "source": "FromClass"}],
            ),
            "u9",
        ),
        (
            claim("u9", [grouped("req", "cpudevnuma000", 2)], name="claim-other"),
            "not found",
        ),
        (claim("other-uid", [grouped("req", "cpudevnuma000", 2)], name="claim-u9"), "uid"),
    ],
    ids=["fractional", "too-many", "unknown-field", "from-class", "missing", "replaced"],
)
async def test_per_claim_errors(
    nursery: trio.Nursery,
    env: tuple[Path, FakeApiServer],
    api: GrpcioApi,
    obj: dict[str, Any],
    message: str,
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(obj)
    r.put_claim(claim("ok", [grouped("req", "cpudevnuma001", 2)]))
    response = await r.call(api, "prepare", "u9", "ok")
    error = response.claims["u9"].error
    assert message in error
    assert "claim-u9" in error or "u9" in error
    assert response.claims["ok"].error == ""  # One bad claim never hides the others.
    assert set(r.cdi().read_all()) == {"ok"}
    r.scope.cancel()


async def test_restart_keeps_cpus_and_releases_deleted_claims(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("keep", [grouped("req", "cpudevnuma000", 4)]))
    r.put_claim(claim("gone", [grouped("req", "cpudevnuma001", 4)]))
    response = await r.call(api, "prepare", "keep", "gone")
    keep = cpus_of(response, "keep", r)
    assert _metadata(root) == ({"ns_claim-gone", "ns_claim-keep"}, {"gone", "keep"})
    await wait_for(lambda: r.daemon.publisher.in_sync.is_set(), 5)
    generation = r.daemon.publisher.health().generation
    writes_before = len(fake.writes())
    r.scope.cancel()
    await trio.sleep(0.05)
    fake.remove_object("resourceclaims", "ns/claim-gone")
    # An orphan spec left by someone else's crash is removed at start.
    CdiDir(root / "cdi").write("orphan", CpuSet.parse("15"))
    r2 = await start(nursery, root, fake, release_grace_period=0.2)
    assert r2.daemon.start_kind == "checkpoint"
    assert r2.daemon.owner.state.claims["keep"].cpus == keep
    assert "orphan" not in r2.cdi().read_all()
    await wait_for(lambda: r2.daemon.recovery_done, 5)
    assert r2.daemon.released_at_start == ("gone",)
    assert set(r2.cdi().read_all()) == {"keep"}
    # The released claim's KEP-5304 metadata (directory and mount spec) went with it.
    assert _metadata(root) == ({"ns_claim-keep"}, {"keep"})
    await wait_for(lambda: r2.daemon.publisher.in_sync.is_set(), 5)
    # Slices did not churn: same generation, no slice writes.
    assert r2.daemon.publisher.health().generation == generation
    slice_writes = [w for w in fake.writes()[writes_before:] if "resourceslices" in w[1]]
    assert slice_writes == []
    r2.scope.cancel()


def _metadata(root: Path) -> tuple[set[str], set[str]]:
    """The claim metadata directories and the claim UIDs of the metadata CDI specs on disk."""
    meta = root / "kubelet" / "plugins" / "dra.cpu" / "dra-device-metadata"
    dirs = {d.name for d in meta.iterdir()} if meta.is_dir() else set()
    specs = {f.name.split("_")[2] for f in (root / "cdi").glob("dra.cpu_metadata_*.json")}
    return dirs, specs


async def test_claim_adopted_from_cdi_and_gone_loses_its_metadata(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    """No checkpoint: the claim is known by its UID only (from its CDI spec); recovery finds
    its metadata directory through the metadata CDI spec's mount and removes both."""
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    r.put_claim(claim("u2", [grouped("req", "cpudevnuma001", 2)]))
    await r.call(api, "prepare", "u1", "u2")
    r.scope.cancel()
    await trio.sleep(0.05)
    (root / "state" / "checkpoint.json").unlink()
    fake.remove_object("resourceclaims", "ns/claim-u1")
    # The grace period must outlast start(): u1 is released once it ends (0.1 s lost that race
    # on a loaded machine, and the adopted claim was gone before it was looked at).
    r2 = await start(nursery, root, fake, release_grace_period=2.0)
    assert r2.daemon.owner.state.claims["u1"].ref.name == ""
    await wait_for(lambda: r2.daemon.recovery_done, 10)
    assert r2.daemon.released_at_start == ("u1",)
    assert _metadata(root) == ({"ns_claim-u2"}, {"u2"})
    r2.scope.cancel()


def test_metadata_of_a_newer_claim_of_the_same_name_stays(tmp_path: Path) -> None:
    from dracpu.core.device_metadata import MetadataDevice
    from dracpu.daemon.metadata import MetadataWriter

    writer = MetadataWriter(
        driver="dra.cpu", plugin_data_dir=tmp_path / "plugin", cdi_dir=tmp_path / "cdi"
    )
    devices = [MetadataDevice("req", "node", "cpudevnuma000", {}, 2)]
    writer.write(namespace="ns", name="c", uid="old", pod_claim_name=None, devices=devices)
    writer.remove(namespace="ns", name="c", uid="old")
    writer.write(namespace="ns", name="c", uid="new", pod_claim_name=None, devices=devices)
    writer.remove(namespace="ns", name="c", uid="old")  # a late release of the old claim
    assert (
        tmp_path / "plugin" / "dra-device-metadata" / "ns_c" / "req" / "metadata.json"
    ).is_file()
    assert [f.name for f in (tmp_path / "cdi").iterdir()] == ["dra.cpu_metadata_new_req.json"]
    writer.remove(namespace="ns", name="c", uid="new")
    assert list((tmp_path / "plugin" / "dra-device-metadata").iterdir()) == []
    assert list((tmp_path / "cdi").iterdir()) == []


async def test_corrupt_checkpoint_rebuilds_from_cdi(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    cpus = cpus_of(await r.call(api, "prepare", "u1"), "u1", r)
    r.scope.cancel()
    await trio.sleep(0.05)
    (root / "state" / "checkpoint.json").write_text("{garbage")
    r2 = await start(nursery, root, fake, release_grace_period=0.1)
    assert r2.daemon.start_kind == "rebuilt"
    assert (root / "state" / "checkpoint.json.corrupt-0").read_text() == "{garbage"
    assert r2.daemon.owner.state.claims["u1"].cpus == cpus
    # The kubelet's retry of the same claim gets the same CPUs, and the claim keeps them.
    again = await r2.call(api, "prepare", "u1")
    assert cpus_of(again, "u1", r2) == cpus
    await wait_for(lambda: r2.daemon.recovery_done, 5)
    assert r2.daemon.released_at_start == ()
    assert r2.daemon.owner.state.claims["u1"].ref.name == "claim-u1"
    r2.scope.cancel()


async def test_api_claim_fetch_error_is_per_claim(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    response = await r.call(api, "prepare", "nope")
    assert "ResourceClaim ns/claim-nope" in response.claims["nope"].error
    assert "not found" in response.claims["nope"].error
    r.scope.cancel()
