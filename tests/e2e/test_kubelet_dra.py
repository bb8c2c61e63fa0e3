"""The kubelet's view of a DRA driver on the rig: registration, prepare/unprepare, retries, the
kubelet's restart and its slice wipes, and CPU resources reaching the container's cgroup.

The driver is the test plugin (tests/e2e/dra_plugin.py, dracpu's kubelet servers and slice
publisher) started by the ``dra_driver`` fixtures; pods are created in the API and run by the
kubelet. Options A and B are the two pod shapes of upstream's
``docs/user/workload-requirements.md``.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.dra_driver import DraDriver, DriverFactory
from tests.e2e.dra_plugin import FAILURE_TEXT
from tests.e2e.kube import (
    RESOURCE,
    Created,
    busybox_container,
    claim,
    claim_pod,
    container_cgroup,
    container_id,
    container_process,
    cpu_quota,
    event_messages,
    get,
    node_slices,
    pod_body,
    pod_cgroup,
    pod_log,
    pod_path,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

NS = "default"
GUARANTEED_1CPU = {"cpu": "1", "memory": "64Mi"}


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def check_claim_env(rig: Rig, pod: dict[str, Any], drv: DraDriver, uid: str) -> str:
    """The container got the CDI device of the claim; returns the claim's CPUs."""
    prepared = [c for c in drv.calls("prepare") if c["uid"] == uid]
    assert len(prepared) == 1, drv.calls()
    cpus: str = prepared[0]["cpus"]
    env = container_process(rig, pod, "main").environ
    assert env["DRACPU_E2E_CLAIM"] == uid
    assert env[f"DRA_CPUSET_{uid.replace('-', '_')}"] == cpus
    return cpus


def test_kubelet_registers_the_driver_and_its_slices_are_published(
    rig: Rig, kube: httpx.Client, dra_driver: DraDriver
) -> None:
    reg = dra_driver.registrations()
    assert reg
    assert reg[-1] == {"op": "registered", "registered": True, "error": ""}
    assert dra_driver.registration_socket.is_socket()
    slices = wait_for("published slice", lambda: node_slices(kube, rig), 20)
    assert [d["name"] for d in slices[0]["spec"]["devices"]] == ["cpu0", "cpu1"]


def test_template_claim_pod_is_prepared_once_and_unprepared_on_delete(
    rig: Rig, kube: httpx.Client, dra_driver: DraDriver, created: Created, device_class: str
) -> None:
    tag = _tag()
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    created.post(
        f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
        {
            "metadata": {"name": f"e2e-{tag}"},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [{"name": "cpus", "exactly": {"deviceClassName": device_class}}]
                    }
                }
            },
        },
    )
    name = f"e2e-tmpl-{tag}"
    body = pod_body(
        name,
        [
            busybox_container(
                rig, "main", "echo started; sleep 3600", resources={"claims": [{"name": "cpus"}]}
            )
        ],
        resourceClaims=[{"name": "cpus", "resourceClaimTemplateName": f"e2e-{tag}"}],
    )
    created.pod(body)
    pod = wait_running(kube, NS, name)
    claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    obj = get(kube, f"{RESOURCE}/namespaces/{NS}/resourceclaims/{claim_name}")
    uid = obj["metadata"]["uid"]
    assert [r["uid"] for r in obj["status"]["reservedFor"]] == [pod["metadata"]["uid"]]
    check_claim_env(rig, pod, dra_driver, uid)
    assert "started" in pod_log(kube, NS, name, "main")
    spec_file = rig.cdi_dir / f"dra.cpu-e2e-{uid}.json"
    assert spec_file.exists()

    created.delete_pod(name)
    wait_for("NodeUnprepareResources", lambda: dra_driver.unprepared(uid) == 1, 30)
    assert dra_driver.prepared(uid) == 1
    assert not spec_file.exists()
    claim_path = f"{RESOURCE}/namespaces/{NS}/resourceclaims/{claim_name}"
    wait_for("generated claim deleted", lambda: kube.get(claim_path).status_code == 404, 30)


def test_failed_prepare_is_retried_and_its_error_shown_in_events(
    rig: Rig,
    kube: httpx.Client,
    dra_driver_factory: DriverFactory,
    created: Created,
    device_class: str,
) -> None:
    drv = dra_driver_factory(fail_prepare=1)
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    tag = _tag()
    uid = claim(created, device_class, f"e2e-{tag}")["metadata"]["uid"]
    name = f"e2e-retry-{tag}"
    created.pod(claim_pod(rig, name, f"e2e-{tag}"))
    # The kubelet's pod worker backs off ~10 s after the failed sync, then prepares again.
    pod = wait_running(kube, NS, name, timeout=90)
    failed = drv.calls("prepare-failed")
    assert [c["uid"] for c in failed] == [uid]
    messages = event_messages(kube, NS, name)
    assert any(
        FAILURE_TEXT in m and m.startswith("FailedPrepareDynamicResources") for m in messages
    ), messages
    check_claim_env(rig, pod, drv, uid)


def test_option_b_container_resources_reach_the_container_cgroup(
    rig: Rig, kube: httpx.Client, dra_driver: DraDriver, created: Created, device_class: str
) -> None:
    """Option B: the claim's container requests and limits exactly its claim's CPU count."""
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    tag = _tag()
    uid = claim(created, device_class, f"e2e-{tag}")["metadata"]["uid"]
    name = f"e2e-optb-{tag}"
    limits = {"requests": GUARANTEED_1CPU, "limits": GUARANTEED_1CPU}
    created.pod(claim_pod(rig, name, f"e2e-{tag}", resources=limits))
    pod = wait_running(kube, NS, name)
    assert pod["status"]["qosClass"] == "Guaranteed"
    check_claim_env(rig, pod, dra_driver, uid)
    # Guaranteed: the pod cgroup sits right under kubepods; 1 CPU = 100 ms per 100 ms period.
    assert pod_cgroup(rig, pod).parent.name == "kubepods"
    ctr = container_cgroup(rig, pod, "main")
    assert cpu_quota(ctr) == 100_000
    shares = ctr / "cpu.shares"
    assert int(shares.read_text() if shares.exists() else "1024") == 1024


def test_option_a_pod_level_resources_reach_the_pod_cgroup(
    rig: Rig, kube: httpx.Client, dra_driver: DraDriver, created: Created, device_class: str
) -> None:
    """Option A: pod.spec.resources holds the pod's CPU budget (claim CPUs + shared sidecar);
    the claim's container sets no CPU of its own."""
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    tag = _tag()
    uid = claim(created, device_class, f"e2e-{tag}")["metadata"]["uid"]
    name = f"e2e-opta-{tag}"
    body = claim_pod(rig, name, f"e2e-{tag}")
    budget = {"cpu": "1500m", "memory": "96Mi"}  # 1 claimed CPU + 0.5 shared for the sidecar
    body["spec"]["resources"] = {"requests": budget, "limits": budget}
    body["spec"]["containers"].append(busybox_container(rig, "sidecar", "sleep 3600"))
    created.pod(body)
    pod = wait_running(kube, NS, name)
    assert pod["spec"].get("resources", {}).get("limits") == budget, "PodLevelResources is off"
    assert pod["status"]["qosClass"] == "Guaranteed"
    check_claim_env(rig, pod, dra_driver, uid)
    pod_cg = pod_cgroup(rig, pod)
    assert pod_cg.parent.name == "kubepods"
    assert cpu_quota(pod_cg) == 150_000
    # The pod budget governs: containers without a CPU limit of their own get the pod's limit
    # (KEP-2837), never more.
    assert cpu_quota(container_cgroup(rig, pod, "main")) == 150_000
    assert cpu_quota(container_cgroup(rig, pod, "sidecar")) == 150_000


def _restart_kubelet(rig: Rig) -> None:
    subprocess.run([str(rig.kubelet_script), "restart"], check=True, timeout=60)


def _node_ready(kube: httpx.Client, rig: Rig) -> bool:
    node = get(kube, f"/api/v1/nodes/{rig.node_name}")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def test_kubelet_restart_keeps_the_preparation_and_wipes_then_gets_back_the_slices(
    rig: Rig, kube: httpx.Client, dra_driver: DraDriver, created: Created, device_class: str
) -> None:
    before = wait_for("published slice", lambda: node_slices(kube, rig), 20)
    tag = _tag()
    uid = claim(created, device_class, f"e2e-{tag}")["metadata"]["uid"]
    name = f"e2e-restart-{tag}"
    created.pod(claim_pod(rig, name, f"e2e-{tag}"))
    pod = wait_running(kube, NS, name)
    cid = container_id(pod, "main")
    registrations = len(dra_driver.registrations())

    _restart_kubelet(rig)
    # At its start the kubelet deletes every slice of its node; the publisher puts them back.
    old = {s["metadata"]["uid"] for s in before}
    wait_for(
        "slices deleted by the kubelet and re-created",
        lambda: (s := node_slices(kube, rig)) and not old & {x["metadata"]["uid"] for x in s},
        30,
    )
    wait_for("node Ready after restart", lambda: _node_ready(kube, rig), 30)
    wait_for("re-registration", lambda: len(dra_driver.registrations()) > registrations, 30)
    # Give the restarted kubelet a few pod syncs: the checkpoint says prepared, so no new call.
    time.sleep(12)
    after = get(kube, pod_path(NS, name))
    assert after["status"]["phase"] == "Running"
    assert container_id(after, "main") == cid
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert dra_driver.prepared(uid) == 1, dra_driver.calls()
    check_claim_env(rig, after, dra_driver, uid)

    created.delete_pod(name)
    wait_for("NodeUnprepareResources after restart", lambda: dra_driver.unprepared(uid) == 1, 30)


def test_driver_restart_reregisters_and_slices_are_wiped_30s_after_it_went_away(
    rig: Rig,
    kube: httpx.Client,
    dra_driver_factory: DriverFactory,
    created: Created,
    device_class: str,
) -> None:
    first = dra_driver_factory()
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    first.stop()  # SIGTERM: both sockets removed, the kubelet unregisters the plugin
    assert not first.registration_socket.exists()
    gone_at = time.monotonic()
    # The kubelet waits 30 s (its wiping delay) for the driver to come back, then deletes them.
    time.sleep(20)
    assert node_slices(kube, rig), "slices deleted before the kubelet's 30 s delay"
    wait_for("kubelet to delete the slices", lambda: not node_slices(kube, rig), 30)
    waited = time.monotonic() - gone_at
    assert 25 < waited < 50, waited

    second = dra_driver_factory()  # a new process: registered again, publishes again
    assert second.registrations()[-1]["registered"]
    wait_for("slices re-created", lambda: node_slices(kube, rig), 20)
    tag = _tag()
    uid = claim(created, device_class, f"e2e-{tag}")["metadata"]["uid"]
    name = f"e2e-rereg-{tag}"
    created.pod(claim_pod(rig, name, f"e2e-{tag}"))
    pod = wait_running(kube, NS, name)
    check_claim_env(rig, pod, second, uid)
    created.delete_pod(name)

    # A crash (SIGKILL) leaves both sockets behind; the next process replaces them and the
    # kubelet registers it again at once.
    second.stop(signal.SIGKILL)
    assert second.registration_socket.exists()
    third = dra_driver_factory()
    assert third.registrations()[-1]["registered"]
    assert node_slices(kube, rig)
