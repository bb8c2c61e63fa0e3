"""End to end through the node agent: scheduler allocation -> dracpu's kubelet DRA server
(grpclib, a test claim handler) -> CRI container with the returned CDI device's env variable."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dracpu.kubelet.handler import (
    ClaimPrepared,
    ClaimRef,
    ClaimUnprepared,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)
from dracpu.kubelet.health import HealthBoard
from dracpu.kubelet.plugin import KubeletPluginConfig, serve_kubelet_plugin
from tests.e2e.node_agent import NodeAgent, wait_for
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

RESOURCE = "/apis/resource.k8s.io/v1"
NS = "default"


class CdiHandler:
    """Prepares every claim as one device whose CDI spec sets ``DRACPU_E2E=<claim uid>``."""

    def __init__(self, cdi_dir: Path, driver: str, pool: str, device: str) -> None:
        self.cdi_dir, self.driver, self.pool, self.device = cdi_dir, driver, pool, device
        self.kind = f"{driver}/cpu"
        self.prepared: list[str] = []
        self.unprepared: list[str] = []

    def _spec(self, uid: str) -> Path:
        return self.cdi_dir / f"{self.driver}-{uid}.json"

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PrepareResult]:
        out: dict[str, PrepareResult] = {}
        for c in claims:
            spec = {
                "cdiVersion": "0.6.0",
                "kind": self.kind,
                "devices": [{"name": c.uid, "containerEdits": {"env": [f"DRACPU_E2E={c.uid}"]}}],
            }
            self._spec(c.uid).write_text(json.dumps(spec))
            self.prepared.append(c.uid)
            device = PreparedDevice(
                pool_name=self.pool,
                device_name=self.device,
                request_names=("cpus",),
                cdi_device_ids=(f"{self.kind}={c.uid}",),
            )
            out[c.uid] = ClaimPrepared(devices=(device,))
        return out

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, UnprepareResult]:
        for c in claims:
            self._spec(c.uid).unlink(missing_ok=True)
            self.unprepared.append(c.uid)
        return {c.uid: ClaimUnprepared() for c in claims}


def _post(kube: httpx.Client, made: list[str], collection: str, body: dict[str, Any]) -> Any:
    r = kube.post(collection, json=body)
    assert r.status_code == 201, f"POST {collection}: {r.status_code} {r.text}"
    made.append(f"{collection}/{body['metadata']['name']}")
    return r.json()


def _create_objects(kube: httpx.Client, rig: Rig, tag: str, driver: str, made: list[str]) -> Any:
    """DeviceClass, ResourceSlice, ResourceClaim and a Pod using it; returns the pod once bound."""
    _post(
        kube,
        made,
        f"{RESOURCE}/deviceclasses",
        {
            "metadata": {"name": f"e2e-{tag}"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        },
    )
    _post(
        kube,
        made,
        f"{RESOURCE}/resourceslices",
        {
            "metadata": {"name": f"e2e-{tag}"},
            "spec": {
                "driver": driver,
                "nodeName": rig.node_name,
                "pool": {"name": rig.node_name, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "cpus0"}],
            },
        },
    )
    _post(
        kube,
        made,
        f"{RESOURCE}/namespaces/{NS}/resourceclaims",
        {
            "metadata": {"name": f"e2e-{tag}"},
            "spec": {
                "devices": {
                    "requests": [{"name": "cpus", "exactly": {"deviceClassName": f"e2e-{tag}"}}]
                }
            },
        },
    )
    pod = _post(
        kube,
        made,
        f"/api/v1/namespaces/{NS}/pods",
        {
            "metadata": {"name": f"e2e-{tag}"},
            "spec": {
                "resourceClaims": [{"name": "cpus", "resourceClaimName": f"e2e-{tag}"}],
                "containers": [
                    {
                        "name": "main",
                        "image": rig.busybox_image,
                        "command": ["sleep", "3600"],
                        "env": [{"name": "FROM_POD_SPEC", "value": "yes"}],
                        "resources": {"claims": [{"name": "cpus"}]},
                    }
                ],
            },
        },
    )
    pod_path = f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}"
    wait_for("pod bound", lambda: kube.get(pod_path).json()["spec"].get("nodeName"), 60)
    return pod


def _delete(kube: httpx.Client, made: list[str]) -> None:
    for path in reversed(made):
        kube.delete(path, params={"gracePeriodSeconds": "0"})


async def test_node_agent_runs_pod_with_prepared_cdi_device(
    rig: Rig, kube: httpx.Client, node_agent: NodeAgent, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    driver = f"e2e-{tag}.dracpu.dev"
    handler = CdiHandler(rig.cdi_dir, driver, rig.node_name, "cpus0")
    made: list[str] = []
    try:
        pod = await trio.to_thread.run_sync(_create_objects, kube, rig, tag, driver, made)
        config = KubeletPluginConfig(
            driver_name=driver,
            kubelet_root=tmp_path,
            plugin_dir=tmp_path / "plugin",
            registry_dir=tmp_path / "registry",
        )
        async with trio.open_nursery() as nursery:
            plugin = await nursery.start(serve_kubelet_plugin, config, handler, HealthBoard())
            node_agent.dra_sockets[driver] = plugin.paths.dra_socket
            running = await trio.to_thread.run_sync(node_agent.run_pod, NS, pod["metadata"]["name"])
            try:
                report = (await trio.to_thread.run_sync(node_agent.report, running))["main"]
            finally:
                await trio.to_thread.run_sync(node_agent.stop_pod, running)
            nursery.cancel_scope.cancel()

        claim_uid = handler.prepared[0]
        assert report.environ["DRACPU_E2E"] == claim_uid  # from the CDI spec via containerd
        assert report.environ["FROM_POD_SPEC"] == "yes"
        assert running.cdi_devices["main"] == [f"{driver}/cpu={claim_uid}"]
        assert handler.unprepared == [claim_uid]
        assert not (rig.cdi_dir / f"{driver}-{claim_uid}.json").exists()
    finally:
        await trio.to_thread.run_sync(_delete, kube, made)
