"""Disk faults on the daemon's real code path (grpcio as the kubelet, real files): a full or
read-only state dir, a full CDI dir, a checkpoint cut short, stray temp files from a crash.

The promise: a prepare or unprepare that cannot be made durable fails with a clear per-claim
error and changes nothing; what was prepared before is kept (the checkpoint on disk still loads
with every claim); when the disk recovers the next call succeeds, without a restart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from tests.daemon.support import GrpcioApi, claim, dra_api, grouped, short_dir, write_machine
from tests.daemon.test_daemon import Running, cpus_of, start
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import write_kubeconfig
from tests.reliability.support import fill, need_root, remount, small_tmpfs

API = dra_api("v1")


@pytest.fixture
async def env() -> AsyncIterator[tuple[Path, FakeApiServer]]:
    with short_dir("dr-") as root:
        write_machine(root)
        write_kubeconfig(root / "kubeconfig", 1)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": "node-a"}})
        yield root, fake


def checkpoint_cpus(state_dir: Path) -> dict[str, str]:
    """Claim UID -> CPUs of the checkpoint on disk (read by a fresh store, as a restart would)."""
    loaded = CheckpointStore(state_dir).load()
    assert loaded.status == "loaded", loaded.reason
    assert loaded.body is not None
    return {c["uid"]: c["cpus"] for c in loaded.body["claims"]}


async def prepare(r: Running, api: GrpcioApi, *uids: str) -> dict[str, str]:
    """Prepare ``uids`` (claims put first, 2 CPUs each); UID -> error ("" when prepared)."""
    for uid in uids:
        r.put_claim(claim(uid, [grouped("req", "cpudevnuma001", 2)]))
    response = await r.call(api, "prepare", *uids)
    return {uid: response.claims[uid].error for uid in uids}


def _full(state: Path) -> Callable[[], None]:
    filler = fill(state)
    return filler.unlink


def _read_only(state: Path) -> Callable[[], None]:
    remount(state, "ro")
    return lambda: remount(state, "rw")


@pytest.mark.parametrize(
    ("fault", "inject", "message"),
    [("full", _full, "No space left on device"), ("read-only", _read_only, "Read-only")],
)
async def test_state_dir_fault_fails_per_claim_keeps_state_and_recovers(
    nursery: trio.Nursery,
    env: tuple[Path, FakeApiServer],
    fault: str,
    inject: Callable[[Path], Callable[[], None]],
    message: str,
) -> None:
    need_root(f"mounts a {fault} tmpfs as the state dir")
    root, fake = env
    with small_tmpfs(root / "state") as state:
        r = await start(nursery, root, fake)
        r.put_claim(claim("kept", [grouped("req", "cpudevnuma000", 4)]))
        kept = cpus_of(await r.call(API, "prepare", "kept"), "kept", r)
        heal = inject(state)
        try:
            # A new claim cannot be made durable: it fails alone, with the cause, and nothing
            # ran (no CDI spec, no CPUs taken).
            errors = await prepare(r, API, "new1", "new2")
            for uid in ("new1", "new2"):
                assert "cannot persist the node state" in errors[uid]
                assert message in errors[uid]
                assert str(state / "checkpoint.json") in errors[uid]
            assert set(r.cdi().read_all()) == {"kept"}
            assert set(r.daemon.owner.state.claims) == {"kept"}
            # A release cannot be made durable either: the claim stays prepared.
            response = await r.call(API, "unprepare", "kept")
            assert message in response.claims["kept"].error
            assert set(r.daemon.owner.state.claims) == {"kept"}
            # The kubelet's retry of a prepared claim needs no write: same CPUs.
            assert cpus_of(await r.call(API, "prepare", "kept"), "kept", r) == kept
            # What was prepared before is on disk, intact.
            assert checkpoint_cpus(state) == {"kept": str(kept)}
        finally:
            heal()
        # The disk is back: the very next call succeeds, no restart.
        assert await prepare(r, API, "new1", "new2") == {"new1": "", "new2": ""}
        on_disk = checkpoint_cpus(state)
        assert set(on_disk) == {"kept", "new1", "new2"}
        assert on_disk["kept"] == str(kept)
        assert r.daemon.restarts == 0
        assert sorted(p.name for p in state.iterdir()) == ["checkpoint.json", "status.sock"]
        r.scope.cancel()


async def test_full_cdi_dir_fails_the_claim_and_the_retry_repairs_it(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    need_root("mounts a full tmpfs as the CDI dir")
    root, fake = env
    with small_tmpfs(root / "cdi") as cdi:
        r = await start(nursery, root, fake)
        filler = fill(cdi)
        errors = await prepare(r, API, "u1")
        assert "cannot write CDI spec" in errors["u1"]
        assert "No space left on device" in errors["u1"]
        # Write-ahead: the checkpoint holds the claim, so the retry gets the same CPUs.
        held = r.daemon.owner.state.claims["u1"].cpus
        assert checkpoint_cpus(root / "state") == {"u1": str(held)}
        assert list(cdi.glob("*.tmp")) == []  # No half-written spec left behind.
        filler.unlink()
        assert cpus_of(await r.call(API, "prepare", "u1"), "u1", r) == held
        r.scope.cancel()


async def stop(r: Running) -> None:
    r.scope.cancel()
    await trio.sleep(0.05)


async def test_checkpoint_cut_short_loses_no_claim(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    assert await prepare(r, API, "a", "b", "c") == {"a": "", "b": "", "c": ""}
    before = {uid: c.cpus for uid, c in r.daemon.owner.state.claims.items()}
    await stop(r)
    path = root / "state" / "checkpoint.json"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # A write torn in the middle (no atomic rename).
    r2 = await start(nursery, root, fake, release_grace_period=0.1)
    assert r2.daemon.start_kind == "rebuilt"
    assert {uid: c.cpus for uid, c in r2.daemon.owner.state.claims.items()} == before
    assert (root / "state" / "checkpoint.json.corrupt-0").read_bytes() == whole[: len(whole) // 2]
    assert checkpoint_cpus(root / "state") == {u: str(c) for u, c in before.items()}
    # Prepares go on: the retries keep their CPUs, a new claim gets other CPUs.
    assert await prepare(r2, API, "a", "d") == {"a": "", "d": ""}
    assert r2.daemon.owner.state.claims["a"].cpus == before["a"]

    for uid, cpus in before.items():
        assert r2.daemon.owner.state.claims["d"].cpus.isdisjoint(cpus), uid

    r2.scope.cancel()


async def test_stray_temp_files_from_a_crash_are_harmless(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    assert await prepare(r, API, "a") == {"a": ""}
    cpus = r.daemon.owner.state.claims["a"].cpus
    await stop(r)
    # A crash in the middle of a checkpoint write and of a CDI write left their temp files,
    # half-written and with the wrong mode.
    stray = root / "state" / ".checkpoint.json.tmp"
    stray.write_bytes(b'{"format": "dracpu-checkpoint", "ver')
    os.chmod(stray, 0o644)
    cdi_stray = root / "cdi" / "dracpu-spec.k3j9x_a.tmp"
    cdi_stray.write_bytes(b'{"cdiVersion": "0.8')
    r2 = await start(nursery, root, fake)
    assert r2.daemon.start_kind == "checkpoint"
    assert r2.daemon.owner.state.claims["a"].cpus == cpus
    assert not cdi_stray.exists()  # Cleared when the CDI dir is reconciled at start.
    assert await prepare(r2, API, "b") == {"b": ""}
    assert set(checkpoint_cpus(root / "state")) == {"a", "b"}
    assert not stray.exists()
    mode = stat.S_IMODE((root / "state" / "checkpoint.json").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert set(CdiDir(root / "cdi").read_all()) == {"a", "b"}
    r2.scope.cancel()
