"""The rig's node is a real kubelet: its identity, pod networking, pod logs through the API."""

from __future__ import annotations

import ipaddress
import uuid

import httpx
import pytest

from tests.e2e.kube import (
    Created,
    busybox_container,
    cgroup_cpuset,
    container_process,
    event_messages,
    get,
    node_client,
    pod_body,
    pod_log,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e


def test_node_is_ready_and_registered_by_the_kubelet(rig: Rig, kube: httpx.Client) -> None:
    node = get(kube, f"/api/v1/nodes/{rig.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == rig.versions["KUBERNETES_VERSION"]
    assert info["containerRuntimeVersion"] == "containerd://" + rig.versions[
        "CONTAINERD_VERSION"
    ].lstrip("v")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == rig.node_ip
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True", ready
    assert not [t for t in node["spec"].get("taints", []) if "pressure" in t["key"]]
    managers = {f["manager"] for f in node["metadata"]["managedFields"]}
    assert "kubelet" in managers


def test_node_identity_is_restricted(rig: Rig, kube: httpx.Client, created: Created) -> None:
    """The Node authorizer and NodeRestriction admission see the kubelet's own cert."""
    other = f"e2e-other-{uuid.uuid4().hex[:8]}"
    created.post("/api/v1/nodes", {"metadata": {"name": other}})
    merge = {"Content-Type": "application/merge-patch+json"}
    with node_client(rig) as as_node:
        assert as_node.get(f"/api/v1/nodes/{rig.node_name}").status_code == 200
        label = {"metadata": {"labels": {"e2e": "x"}}}
        r = as_node.patch(f"/api/v1/nodes/{other}", json=label, headers=merge)
        assert r.status_code == 403, r.text
        # Its own Node, but a label only the control plane may set: NodeRestriction says no.
        restricted = {"metadata": {"labels": {"node-restriction.kubernetes.io/e2e": "x"}}}
        r = as_node.patch(f"/api/v1/nodes/{rig.node_name}", json=restricted, headers=merge)
        assert r.status_code == 403, r.text
        assert "node-restriction.kubernetes.io" in r.text


@pytest.mark.parametrize("host_network", [False, True], ids=["pod-network", "host-network"])
def test_pod_runs_and_its_log_reaches_the_api(
    rig: Rig, kube: httpx.Client, created: Created, host_network: bool
) -> None:
    name = f"e2e-log-{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex
    created.pod(
        pod_body(
            name,
            [busybox_container(rig, "c", f"echo {token}; sleep 3600")],
            hostNetwork=host_network,
        )
    )
    pod = wait_running(kube, "default", name)
    ip = pod["status"]["podIP"]
    if host_network:
        assert ip == rig.node_ip
    else:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.0.0/16"), ip
    # GET pods/<name>/log: the apiserver reaches the kubelet on the node's InternalIP with its
    # client cert and checks the kubelet's serving cert against the rig CA.
    wait_for("log line through the API", lambda: token in pod_log(kube, "default", name, "c"))
    reasons = {m.split(":")[0] for m in event_messages(kube, "default", name)}
    assert {"Scheduled", "Created", "Started"} <= reasons, reasons
    proc = container_process(rig, pod, "c")
    assert proc.environ["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"  # the kubelet's service env
    # cpuManagerPolicy none: the container may use the CPUs of its cgroup's cpuset.
    assert proc.cpus_allowed_list == cgroup_cpuset(rig, pod, "c")
    created.delete_pod(name)
