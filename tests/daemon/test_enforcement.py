"""The daemon end to end with the Go NRI peer as the runtime: grpcio as kubelet prepares a claim,
the runtime creates the claim's container (pinned, shared ones shrink in the same response) and
unprepare widens the shared container through UpdateContainers, all through the state owner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dracpu.core.cpuset import CpuSet
from dracpu.daemon.config import EnforcementMode
from tests.daemon.support import claim, dra_api, grouped
from tests.daemon.test_daemon import cpus_of, env, start
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.waiting import wait_for
from tests.nri.conftest import nri_peer_binary, socket_path
from tests.nri.peer import open_peer

__all__ = ["env", "nri_peer_binary", "socket_path"]


def cpus(update: dict[str, Any]) -> str:
    return str(update["linux"]["resources"]["cpu"]["cpus"])


async def test_pin_shrink_widen_through_the_daemon(
    nursery: trio.Nursery,
    env: tuple[Path, FakeApiServer],
    nri_peer_binary: Path,
    socket_path: str,
) -> None:
    root, fake = env
    api = dra_api("v1")
    peer = await open_peer(nursery, nri_peer_binary)
    await peer.command("add-pod", pod="p0")
    await peer.command("add-pod", pod="p1")
    await peer.command("start", socket=socket_path)
    r = await start(
        nursery, root, fake, nri_socket=Path(socket_path), enforcement=EnforcementMode.NRI
    )
    enforcement = r.daemon.enforcement
    assert enforcement is not None
    await wait_for(lambda: enforcement.active == "nri", 10)
    rsp = await peer.command("create", pod="p0", id="s1", env=["PATH=/bin"])
    assert rsp["adjust"]["linux"]["resources"]["cpu"]["cpus"] == "0-15"

    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 4)]))
    got = cpus_of(await r.call(api, "prepare", "u1"), "u1", r)
    rsp = await peer.command("create", pod="p1", id="e1", env=[f"DRA_CPUSET_u1={got}"])
    assert rsp["adjust"]["linux"]["resources"]["cpu"]["cpus"] == str(got)
    assert {u["container_id"]: cpus(u) for u in rsp["update"]} == {
        "s1": str(CpuSet.parse("0-15") - got)
    }
    # The runtime's requests are timed by event; enforcement counts as active for /healthz.
    scrape = r.daemon.metrics.render().decode()
    create = 'dracpu_nri_request_duration_seconds_count{event="CreateContainer"} 2.0'
    assert create in scrape
    assert "dracpu_cgroup_fallback_active 0.0" in scrape
    assert {p.name: p.healthy for p in r.daemon.health_parts()}["enforcement"] is True

    await peer.command("stop-container", id="e1")
    await peer.command("remove-container", id="e1")
    start_at = len(peer.events)
    response = await r.call(api, "unprepare", "u1")
    assert response.claims["u1"].error == ""
    i = await peer.wait_event(lambda e: e.get("ev") == "update-containers", start=start_at)
    assert {u["container_id"]: cpus(u) for u in peer.events[i]["updates"]} == {"s1": "0-15"}
    r.scope.cancel()
