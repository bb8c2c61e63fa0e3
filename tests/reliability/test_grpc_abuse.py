"""The daemon's real kubelet sockets under abuse, with grpcio as the (bad) kubelet: malformed
and oversized requests, odd claim references, a batch of 1,000 claims, and hundreds of idle
connections. Every request gets an answer (per-claim errors, or a gRPC error status), and the
server keeps answering good requests afterwards."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from dracpu.daemon.status import read_status
from tests.daemon.support import APIS, PROTOS, TIMEOUT, claim, dra_api, grouped, kubelet_call
from tests.daemon.test_daemon import Running, start
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.waiting import wait_for
from tests.reliability.test_disk_faults import env
from tests.support.grpcio_protos import load_grpc_modules

__all__ = ["env"]

API = dra_api("v1")
REG_PB2, REG_GRPC = load_grpc_modules(PROTOS, f"{APIS}/pluginregistration/v1/api.proto")
PREPARE = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources"
IDLE = 200


def raw_call(socket_path: Path, method: str, payload: bytes) -> tuple[grpc.StatusCode, bytes]:
    """Send ``payload`` as the serialized request of ``method``; the status and raw reply."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(method)  # No (de)serializers: bytes in, bytes out.
        try:
            reply = call(payload, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code(), b""
        return grpc.StatusCode.OK, reply


async def good_prepare(r: Running, uid: str) -> None:
    """A well-formed prepare still succeeds."""
    r.put_claim(claim(uid, [grouped("req", "cpudevnuma001", 1)]))
    response = await r.call(API, "prepare", uid)
    assert response.claims[uid].error == ""


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03", b"\x0a" + b"\xff" * 10, b"\x08" * 64],
    ids=["garbage", "truncated", "bad-length", "wrong-wire-type"],
)
async def test_malformed_request_gets_an_error(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], payload: bytes
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    code, _ = await trio.to_thread.run_sync(raw_call, r.dra_socket, PREPARE, payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await trio.to_thread.run_sync(
        raw_call, r.dra_socket, "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/Nope", b""
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert r.daemon.owner.state.claims == {}
    await good_prepare(r, "ok")
    r.scope.cancel()


async def test_oversized_request_is_refused_and_the_server_goes_on(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    refs = [("ns", "x" * (5 << 20), "huge")]  # A 5 MiB request: over the 4 MiB limit.
    with pytest.raises(grpc.RpcError) as caught:
        await kubelet_call(r.dra_socket, API, "prepare", refs)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await good_prepare(r, "ok")
    r.scope.cancel()


async def test_odd_and_huge_claim_references_fail_per_claim(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    r.put_claim(claim("ok", [grouped("req", "cpudevnuma000", 1)]))
    refs = [
        ("ns", "claim-ok", "ok"),
        ("", "", "empty-name"),
        ("ns", "x" * (1 << 20), "huge-name"),  # A 1 MiB name (under the 4 MiB request limit).
        ("ns/..", "../../etc", "path-name"),
        ("ns", "c", "../../uid"),
        ("ns", "c", "u" * 300),
    ]
    started = time.monotonic()
    response = await kubelet_call(r.dra_socket, API, "prepare", refs)
    elapsed = time.monotonic() - started
    assert set(response.claims) == {uid for _, _, uid in refs}
    assert response.claims["ok"].error == ""
    for _, _, uid in refs[1:]:
        error = response.claims[uid].error
        assert error, uid
        assert len(error) < 4096, (uid, len(error))
    assert set(r.cdi().read_all()) == {"ok"}
    assert elapsed < 10, elapsed
    await good_prepare(r, "ok2")
    r.scope.cancel()


async def test_batch_of_1000_claims(nursery: trio.Nursery, env: tuple[Path, FakeApiServer]) -> None:
    root, fake = env
    uids = [f"b{i:04d}" for i in range(1000)]
    for i, uid in enumerate(uids):
        fake.put_object("resourceclaims", claim(uid, [grouped("req", f"cpudevnuma00{i % 2}", 1)]))
    r = await start(nursery, root, fake)
    await wait_for(lambda: r.daemon.cache.reflector.synced.is_set(), 10)
    started = time.monotonic()
    response = await r.call(API, "prepare", *uids)
    elapsed = time.monotonic() - started
    assert set(response.claims) == set(uids)
    prepared = [u for u in uids if response.claims[u].error == ""]
    failed = [u for u in uids if response.claims[u].error]
    # 16 CPUs, 1 each: exactly 16 claims fit; every other one fails alone, naming itself.
    assert len(prepared) == 16
    assert all(u in response.claims[u].error for u in failed)
    held = [r.daemon.owner.state.claims[u].cpus for u in prepared]
    assert len(set().union(*held)) == 16
    assert set(r.cdi().read_all()) == set(prepared)
    response = await r.call(API, "unprepare", *uids)
    assert all(response.claims[u].error == "" for u in uids)
    assert r.daemon.owner.state.claims == {}
    assert r.cdi().read_all() == {}
    print(f"1000-claim prepare batch answered in {elapsed:.2f} s")
    assert elapsed < 20, elapsed
    r.scope.cancel()


def idle_connections(path: Path, count: int, stack: ExitStack, *, preface: bool) -> None:
    """Open ``count`` connections to ``path`` that send nothing (or only the HTTP/2 preface),
    closed when ``stack`` closes. Blocking: run it in a thread (connect waits for accept)."""
    for _ in range(count):
        s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        s.connect(str(path))
        if preface:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def get_info(path: Path) -> Any:
    with grpc.insecure_channel(f"unix://{path}") as channel:
        return REG_GRPC.RegistrationStub(channel).GetInfo(REG_PB2.InfoRequest(), timeout=TIMEOUT)


async def test_many_idle_connections_to_each_socket(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    assert r.daemon.plugin_config is not None
    paths = r.daemon.plugin_config.paths()
    status = root / "state" / "status.sock"
    with ExitStack() as stack:
        for path in (paths.dra_socket, paths.registration_socket, status):
            # The status socket answers and closes at once: only gRPC ones get the preface.
            for preface in (False, path != status):
                await trio.to_thread.run_sync(
                    partial(idle_connections, path, IDLE // 2, stack, preface=preface)
                )
        await good_prepare(r, "busy")
        info = await trio.to_thread.run_sync(get_info, paths.registration_socket)
        assert info.name == "dra.cpu"
        doc = await trio.to_thread.run_sync(read_status, root / "state")
        assert doc["daemon"] == "up"
    r.scope.cancel()
