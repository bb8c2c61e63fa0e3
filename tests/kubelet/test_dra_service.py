"""DRA node service v1 and v1beta1, called by grpcio over the real DRA unix socket."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
import trio

from dracpu.kubelet import ClaimFailed, ClaimPrepared, ClaimRef, PreparedDevice, PrepareResult
from tests.kubelet.conftest import GrpcioApi, PluginUnderTest

TIMEOUT = 10.0


def _claims(api: GrpcioApi, *uids: str) -> list[object]:
    return [api.pb2.Claim(namespace="ns", name=f"claim-{u}", uid=u) for u in uids]


async def _prepare(plugin: PluginUnderTest, api: GrpcioApi, *uids: str) -> object:
    def call() -> object:
        with plugin.channel() as channel:
            stub = api.grpc.DRAPluginStub(channel)
            request = api.pb2.NodePrepareResourcesRequest(claims=_claims(api, *uids))
            return stub.NodePrepareResources(request, timeout=TIMEOUT)

    return await trio.to_thread.run_sync(call)


async def _unprepare(plugin: PluginUnderTest, api: GrpcioApi, *uids: str) -> object:
    def call() -> object:
        with plugin.channel() as channel:
            stub = api.grpc.DRAPluginStub(channel)
            request = api.pb2.NodeUnprepareResourcesRequest(claims=_claims(api, *uids))
            return stub.NodeUnprepareResources(request, timeout=TIMEOUT)

    return await trio.to_thread.run_sync(call)


@pytest.fixture(params=["v1", "v1beta1"])
def dra_api(request: pytest.FixtureRequest, dra_v1: GrpcioApi, dra_v1beta1: GrpcioApi) -> GrpcioApi:
    return dra_v1 if request.param == "v1" else dra_v1beta1


async def test_prepare_returns_devices_per_claim(
    plugin: PluginUnderTest, dra_api: GrpcioApi
) -> None:
    plugin.handler.prepare_results["u2"] = ClaimPrepared(
        (
            PreparedDevice(
                "node-a",
                "cpudev003",
                request_names=("req-0",),
                cdi_device_ids=("dra.cpu/cpu=claim-u2",),
            ),
            PreparedDevice("node-a", "cpudev004"),
        )
    )
    response = await _prepare(plugin, dra_api, "u1", "u2")

    assert set(response.claims) == {"u1", "u2"}
    assert response.claims["u1"].error == ""
    assert [d.device_name for d in response.claims["u1"].devices] == ["cpu-u1"]
    u2 = response.claims["u2"].devices
    assert [(d.pool_name, d.device_name) for d in u2] == [
        ("node-a", "cpudev003"),
        ("node-a", "cpudev004"),
    ]
    assert list(u2[0].request_names) == ["req-0"]
    assert list(u2[0].cdi_device_ids) == ["dra.cpu/cpu=claim-u2"]
    assert list(u2[1].request_names) == []
    assert plugin.handler.calls == [
        (
            "prepare",
            (ClaimRef("ns", "claim-u1", "u1"), ClaimRef("ns", "claim-u2", "u2")),
        )
    ]


async def test_unprepare_reports_each_claim(plugin: PluginUnderTest, dra_api: GrpcioApi) -> None:
    plugin.handler.unprepare_results["bad"] = ClaimFailed("cgroup busy")
    response = await _unprepare(plugin, dra_api, "good", "bad")

    assert {uid: r.error for uid, r in response.claims.items()} == {
        "good": "",
        "bad": "cgroup busy",
    }
    assert plugin.handler.calls == [
        ("unprepare", (ClaimRef("ns", "claim-good", "good"), ClaimRef("ns", "claim-bad", "bad")))
    ]


async def test_prepare_error_surfaces_on_its_claim_only(
    plugin: PluginUnderTest, dra_api: GrpcioApi
) -> None:
    plugin.handler.prepare_results["u2"] = ClaimFailed("not enough exclusive CPUs on NUMA node 1")
    response = await _prepare(plugin, dra_api, "u1", "u2")

    assert response.claims["u1"].error == ""
    assert len(response.claims["u1"].devices) == 1
    assert response.claims["u2"].error == "not enough exclusive CPUs on NUMA node 1"
    assert len(response.claims["u2"].devices) == 0


async def test_handler_exception_fails_every_claim_of_the_batch(
    plugin: PluginUnderTest, dra_api: GrpcioApi
) -> None:
    plugin.handler.raise_error = RuntimeError("checkpoint file unreadable")
    prepared = await _prepare(plugin, dra_api, "a", "b")
    unprepared = await _unprepare(plugin, dra_api, "a")

    for result in prepared.claims.values():
        assert result.error == "NodePrepareResources: checkpoint file unreadable"
    assert set(prepared.claims) == {"a", "b"}
    assert unprepared.claims["a"].error == "NodeUnprepareResources: checkpoint file unreadable"


async def test_missing_results_become_errors_and_unknown_ones_are_dropped(
    plugin: PluginUnderTest, dra_v1: GrpcioApi
) -> None:
    async def forgetful_prepare(claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return {"stranger": ClaimPrepared()}

    plugin.handler.prepare_override = forgetful_prepare
    response = await _prepare(plugin, dra_v1, "asked")

    assert set(response.claims) == {"asked"}
    assert "no result from the driver for ResourceClaim ns/claim-asked" in (
        response.claims["asked"].error
    )


async def test_share_id_is_sent_on_v1_only(
    plugin: PluginUnderTest, dra_v1: GrpcioApi, dra_v1beta1: GrpcioApi
) -> None:
    plugin.handler.prepare_results["s"] = ClaimPrepared(
        (PreparedDevice("p", "d", share_id="8b5a9d3e-1111-4b6f-9e5d-000000000001"),)
    )
    v1_response = await _prepare(plugin, dra_v1, "s")
    v1beta1_response = await _prepare(plugin, dra_v1beta1, "s")

    v1_device = v1_response.claims["s"].devices[0]
    assert v1_device.HasField("share_id")
    assert v1_device.share_id == "8b5a9d3e-1111-4b6f-9e5d-000000000001"
    assert v1beta1_response.claims["s"].devices[0].device_name == "d"
    assert "share_id" not in dra_v1beta1.pb2.Device.DESCRIPTOR.fields_by_name


async def test_share_id_absent_when_not_shared(plugin: PluginUnderTest, dra_v1: GrpcioApi) -> None:
    response = await _prepare(plugin, dra_v1, "x")
    assert not response.claims["x"].devices[0].HasField("share_id")


async def test_empty_request_gets_empty_response(
    plugin: PluginUnderTest, dra_api: GrpcioApi
) -> None:
    response = await _prepare(plugin, dra_api)
    assert len(response.claims) == 0
    assert plugin.handler.calls == []


async def test_concurrent_calls_are_serialized(plugin: PluginUnderTest, dra_v1: GrpcioApi) -> None:
    active = 0
    peak = 0

    async def slow_prepare(claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.05)
        active -= 1
        return {c.uid: ClaimPrepared() for c in claims}

    plugin.handler.prepare_override = slow_prepare
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(_prepare, plugin, dra_v1, f"c{i}")
    assert peak == 1


async def test_unknown_method_is_unimplemented(plugin: PluginUnderTest) -> None:
    def call() -> grpc.StatusCode:
        with plugin.channel() as channel:
            method = channel.unary_unary("/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NoSuchMethod")
            try:
                method(b"", timeout=TIMEOUT)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    assert await trio.to_thread.run_sync(call) == grpc.StatusCode.UNIMPLEMENTED
