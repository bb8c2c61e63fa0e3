"""dracpu's CPU enforcement through the rig's real containerd NRI, pods run by the real kubelet.

``dracpu run --enforcement=nri`` (grouped by NUMA node, nothing reserved, 2 CPUs) is the node's
DRA driver. Pins are read from ``/proc/<pid>/status`` (``Cpus_allowed_list``) of the container's
init process on the host, and a shared container also prints its own view (its log, read through
the API). Rejections reach the pod's events through containerd and the kubelet.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import httpx
import pytest

from tests.e2e.enforcement import (
    CLAIMED,
    NS,
    SYNCED,
    WATCH_SELF,
    DaemonFactory,
    claim_cpus,
    claim_pod,
    new_tag,
    other,
    seen_inside,
    shared_pod,
    start_daemon,
    template,
)
from tests.e2e.kube import (
    Created,
    busybox_container,
    container_process,
    event_messages,
    get,
    pod_log,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e


def test_exclusive_pin_and_the_shared_pool_shrinking_and_widening(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    start_daemon(dracpu_daemon_factory, kube, rig)
    tag = new_tag()
    shared = f"e2e-shared-{tag}"
    created.pod(shared_pod(rig, shared))
    sp = wait_running(kube, NS, shared)
    wait_for("shared container sees 0-1", lambda: seen_inside(kube, shared) == "0-1", 20)
    assert container_process(rig, sp, "main").cpus_allowed_list == "0-1"

    template(created, f"e2e-{tag}")
    excl = f"e2e-excl-{tag}"
    created.pod(claim_pod(rig, excl, f"e2e-{tag}"))
    ep = wait_running(kube, NS, excl, timeout=90)
    uid, cpus = claim_cpus(kube, ep)
    proc = container_process(rig, ep, "c0")
    assert proc.environ[f"DRA_CPUSET_{uid}"] == cpus
    assert proc.cpus_allowed_list == cpus
    rest = other(cpus)
    wait_for(f"shared pool shrinks to {rest}", lambda: seen_inside(kube, shared) == rest, 20)
    assert container_process(rig, sp, "main").cpus_allowed_list == rest

    created.delete_pod(excl)
    wait_for("shared pool widens to 0-1", lambda: seen_inside(kube, shared) == "0-1", 30)
    assert container_process(rig, sp, "main").cpus_allowed_list == "0-1"


def test_forged_cpuset_env_is_rejected(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    start_daemon(dracpu_daemon_factory, kube, rig)
    forged = str(uuid.uuid4())
    name = f"e2e-forged-{new_tag()}"
    created.pod(shared_pod(rig, name, env=[{"name": f"DRA_CPUSET_{forged}", "value": "0"}]))
    want = f"names claim {forged}, which is not prepared on this node"
    messages = wait_for(
        "CreateContainer refused",
        lambda: [m for m in event_messages(kube, NS, name) if want in m],
        40,
    )
    assert messages[0].startswith("Failed"), messages
    pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
    assert pod["status"]["phase"] == "Pending", pod["status"]


def test_claim_used_by_a_second_container_is_rejected(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    start_daemon(dracpu_daemon_factory, kube, rig)
    tag = new_tag()
    template(created, f"e2e-{tag}")
    name = f"e2e-two-{tag}"
    created.pod(claim_pod(rig, name, f"e2e-{tag}", containers=2))
    want = "a claim has one consumer"
    messages = wait_for(
        "second container refused",
        lambda: [m for m in event_messages(kube, NS, name) if want in m],
        60,
    )
    assert "c1" in messages[0] or "c0" in messages[0], messages
    pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
    running = [
        s["name"] for s in pod["status"].get("containerStatuses", []) if "running" in s["state"]
    ]
    assert len(running) <= 1, pod["status"]["containerStatuses"]


def test_daemon_killed_and_restarted_moves_nothing(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    first = start_daemon(dracpu_daemon_factory, kube, rig)
    tag = new_tag()
    template(created, f"e2e-{tag}")
    excl, shared = f"e2e-excl-{tag}", f"e2e-shared-{tag}"
    created.pod(claim_pod(rig, excl, f"e2e-{tag}"))
    created.pod(shared_pod(rig, shared))
    ep = wait_running(kube, NS, excl, timeout=90)
    sp = wait_running(kube, NS, shared)
    uid, cpus = claim_cpus(kube, ep)
    rest = other(cpus)
    wait_for("shared pool settled", lambda: seen_inside(kube, shared) == rest, 20)
    held = first.status()["claims"]

    first.stop(signal.SIGKILL)
    second = dracpu_daemon_factory(
        cpu_device_mode="grouped", group_by="numanode", state_dir=first.state_dir
    )
    assert [c["uid"] for c in second.status()["claims"]] == [c["uid"] for c in held]
    assert [(c["uid"], c["cpus"]) for c in second.status()["claims"]] == [(uid, cpus)]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # sampled for a while: nothing moves after the restart
        assert container_process(rig, ep, "c0").cpus_allowed_list == cpus
        assert container_process(rig, sp, "main").cpus_allowed_list == rest
        time.sleep(0.3)
    assert seen_inside(kube, shared) == rest
    log = second.log.read_text()
    assert SYNCED in log, log[-2000:]
    pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{excl}")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_containerd_restart_keeps_the_pins_and_nri_comes_back(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    drv = start_daemon(dracpu_daemon_factory, kube, rig)
    tag = new_tag()
    template(created, f"e2e-{tag}")
    excl, shared = f"e2e-excl-{tag}", f"e2e-shared-{tag}"
    created.pod(claim_pod(rig, excl, f"e2e-{tag}"))
    created.pod(shared_pod(rig, shared))
    ep = wait_running(kube, NS, excl, timeout=90)
    sp = wait_running(kube, NS, shared)
    _, cpus = claim_cpus(kube, ep)
    rest = other(cpus)
    wait_for("shared pool settled", lambda: seen_inside(kube, shared) == rest, 20)
    before = drv.log.read_text().count(SYNCED)

    subprocess.run([str(rig.containerd_restart_script)], check=True, timeout=90)
    # dracpu reconnects to the new containerd's NRI socket (its backoff) and synchronizes.
    wait_for(
        "dracpu re-registered with NRI", lambda: drv.log.read_text().count(SYNCED) > before, 60
    )
    assert container_process(rig, ep, "c0").cpus_allowed_list == cpus
    assert container_process(rig, sp, "main").cpus_allowed_list == rest
    # The pod log read through the apiserver can return a partial line while containerd's log
    # stream reopens after the restart; wait for the container's next report.
    wait_for("shared pool seen inside after restart", lambda: seen_inside(kube, shared) == rest, 20)
    # A container created after the restart is placed by dracpu again: the shared pool.
    late = f"e2e-late-{tag}"
    created.pod(shared_pod(rig, late))
    lp = wait_running(kube, NS, late, timeout=60)
    assert container_process(rig, lp, "main").cpus_allowed_list == rest
    for name in (excl, shared):
        pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]


def test_init_container_claim_passes_to_the_app_and_the_others_share(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    """Kinds of container in one pod with a claim, as the kubelet's CPU Manager treats them: the
    init container and then the app container that names the same claim get its CPUs (the
    claim passes on once the init container has stopped: NRI's StopContainer at its exit); a
    sidecar (restartable init container) and an app container without the claim run on the
    shared pool."""
    start_daemon(dracpu_daemon_factory, kube, rig)
    tag = new_tag()
    template(created, f"e2e-{tag}")
    name = f"e2e-kinds-{tag}"
    report = "grep Cpus_allowed_list /proc/self/status"
    body = claim_pod(rig, name, f"e2e-{tag}")
    body["spec"]["initContainers"] = [
        busybox_container(rig, "init", report, resources=CLAIMED),
        busybox_container(rig, "side", WATCH_SELF, restartPolicy="Always"),
    ]
    body["spec"]["containers"] = [
        busybox_container(rig, "app", "sleep 3600", resources=CLAIMED),
        busybox_container(rig, "plain", WATCH_SELF),
    ]
    created.pod(body)
    pod = wait_running(kube, NS, name, timeout=90)
    uid, cpus = claim_cpus(kube, pod)
    rest = other(cpus)
    init_log = pod_log(kube, NS, name, "init")
    assert init_log.split(":", 1)[1].strip() == cpus, init_log
    app = container_process(rig, pod, "app")
    assert app.environ[f"DRA_CPUSET_{uid}"] == cpus
    assert app.cpus_allowed_list == cpus
    for shared in ("side", "plain"):
        assert container_process(rig, pod, shared).cpus_allowed_list == rest, shared
    wait_for(f"side sees {rest}", lambda: seen_inside(kube, name, "side") == rest, 20)
    wait_for(f"plain sees {rest}", lambda: seen_inside(kube, name, "plain") == rest, 20)
    statuses = pod["status"]["containerStatuses"] + pod["status"]["initContainerStatuses"]
    assert all(s["restartCount"] == 0 for s in statuses), statuses
