"""dracpu deployed by `just deploy` on the rig: the image imported into the rig's containerd,
the chart installed with the rig's paths and explicit API endpoint, the DaemonSet's pod started
by the rig's real kubelet, slices published, a `helm upgrade` with a changed flag rolling the
pod, and `just undeploy` removing the chart's objects. Needs the daemon (`dracpu run`) and the
rig's kubelet; the image build and import take about a minute."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dracpu.cli import build_parser
from dracpu.core.cpuset import CpuSet
from tests.deploy.chart import CHART_DIR, REPO_ROOT, Chart, build_helm
from tests.e2e.examples import NS, Example, cdi_spec, check_deleted, check_pod, upstream_example
from tests.e2e.kube import Created, container_process, get, pod_path, wait_for
from tests.e2e.node_agent import kube_client
from tests.e2e.rig import Rig
from tests.e2e.test_deploy_admission import message, slice_body

pytestmark = pytest.mark.e2e

SYSTEM = "kube-system"
DS = f"/apis/apps/v1/namespaces/{SYSTEM}/daemonsets/dracpu"


def _has_run_command() -> bool:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return "run" in commands.choices  # type: ignore[operator]


def deploy(rig: Rig, action: str, *args: str) -> None:
    env = {**os.environ, "KUBECONFIG": str(rig.kubeconfig)}
    done = subprocess.run(
        [str(REPO_ROOT / "hack/deploy.sh"), action, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def deployed(rig: Rig) -> Iterator[httpx.Client]:
    if not _has_run_command():
        pytest.skip("`dracpu run` is not on this branch yet (daemon branch)")
    if not rig.pid_file("kubelet").exists():
        pytest.skip("the rig runs no kubelet yet (real kubelet in the rig)")
    deploy(rig, "deploy")
    with kube_client(rig) as kube:
        try:
            yield kube
        finally:
            deploy(rig, "undeploy")


def driver_pods(kube: httpx.Client) -> list[dict[str, Any]]:
    r = kube.get(f"/api/v1/namespaces/{SYSTEM}/pods", params={"labelSelector": "app=dracpu"})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def node_slices(kube: httpx.Client, rig: Rig) -> list[dict[str, Any]]:
    r = kube.get(
        "/apis/resource.k8s.io/v1/resourceslices",
        params={"fieldSelector": f"spec.nodeName={rig.node_name},spec.driver=dra.cpu"},
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_pod_runs_on_the_rig_node_and_publishes_slices(deployed: httpx.Client, rig: Rig) -> None:
    # helm --wait returns once the DaemonSet's pod is scheduled and started; the readiness probe
    # (/healthz: slices in sync, registered, NRI connected) turns it Ready a few seconds later.
    pods = wait_for(
        "a Ready driver pod", lambda: [p for p in driver_pods(deployed) if ready(p)], 120
    )
    assert len(driver_pods(deployed)) == 1
    assert pods[0]["spec"]["nodeName"] == rig.node_name
    assert pods[0]["spec"]["hostNetwork"] is True
    slices = wait_for("the node's slices", lambda: node_slices(deployed, rig), 60)
    assert all(s["metadata"]["ownerReferences"][0]["kind"] == "Node" for s in slices)


class DeployedDaemon:
    """The DaemonSet's dracpu, read from the host: its state dir is a hostPath
    (``stateDir=<rig>/dracpu``, set by ``just deploy``) holding the checkpoint and the status
    socket."""

    def __init__(self, rig: Rig) -> None:
        self.state_dir = rig.state_dir / "dracpu"

    def status(self) -> dict[str, Any]:
        """``dracpu status --json`` against the deployed daemon's state dir."""
        done = subprocess.run(
            [sys.executable, "-m", "dracpu", "status", f"--state-dir={self.state_dir}", "--json"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def checkpoint_claims(self) -> dict[str, str]:
        """claim uid -> cpus in the checkpoint file on disk."""
        doc = json.loads((self.state_dir / "checkpoint.json").read_text())
        return {c["uid"]: c["cpus"] for c in doc["body"]["claims"]}


def registration_sockets(rig: Rig) -> list[str]:
    return sorted(p.name for p in rig.plugins_registry.glob("dra.cpu*-reg.sock"))


def ready_driver_pod(kube: httpx.Client, other_than: str = "") -> dict[str, Any] | None:
    """The one Ready driver pod whose UID is not ``other_than``, if there is exactly one pod."""
    pods = driver_pods(kube)
    if len(pods) == 1 and pods[0]["metadata"]["uid"] != other_than and ready(pods[0]):
        return pods[0]
    return None


def test_sample_claim_pod_runs_on_exclusive_cpus_and_survives_helm_upgrade(
    deployed: httpx.Client, rig: Rig
) -> None:
    """Upstream's grouped example under the deployed DaemonSet: the container runs on its
    claim's CPUs (``/proc/<pid>/status``, found through its cgroup) with the claim's CDI env,
    and the driver's own (shared) container is off them. ``helm upgrade`` with a changed flag
    replaces the driver pod; the claim pod keeps running, same process, same CPUs; the new
    daemon holds the claim (status and checkpoint) and, when the pod is deleted, unprepares it:
    no CDI spec left, the CPU back in the shared pool."""
    kube, daemon = deployed, DeployedDaemon(rig)
    driver = wait_for("a Ready driver pod", lambda: ready_driver_pod(kube), 120)
    created = Created(kube, NS)
    try:
        ex = Example(rig, upstream_example("pod_with_resource_claim_grouped_mode"))
        ex.create(created)
        ((uid, cpus),) = check_pod(rig, kube, ex, daemon).values()
        claimed = CpuSet.parse(cpus)
        assert len(claimed) == 1, cpus
        before = daemon.status()
        shared = CpuSet.parse(before["sharedPool"])
        assert shared, before
        assert not shared & claimed, before
        assert daemon.checkpoint_claims() == {uid: cpus}
        pod = get(kube, pod_path(NS, ex.name))
        (container,) = pod["spec"]["containers"]
        workload = container_process(rig, pod, container["name"])
        # The driver's container holds no claim: NRI keeps it on the shared pool.
        wait_for(
            "the driver container on the shared pool",
            lambda: (
                container_process(rig, driver, "dracpu").cpus_allowed_list == before["sharedPool"]
            ),
            20,
        )

        # Rolling-update socket names: the registration socket carries the pod's UID.
        assert registration_sockets(rig) == [f"dra.cpu-{driver['metadata']['uid']}-reg.sock"]

        upgrade_started = time.monotonic()
        deploy(rig, "deploy", "--set", "args.strategy=spread")
        new = wait_for(
            "the new driver pod Ready",
            lambda: ready_driver_pod(kube, other_than=driver["metadata"]["uid"]),
            120,
        )
        assert "--strategy=spread" in new["spec"]["containers"][0]["args"]
        assert registration_sockets(rig) == [f"dra.cpu-{new['metadata']['uid']}-reg.sock"]
        after = wait_for(
            "the new daemon's status",
            lambda: (
                (s := daemon.status()).get("daemon") == "up"
                and s["uptimeSeconds"] < time.monotonic() - upgrade_started
                and s
            ),
            30,
        )
        assert after["config"]["strategy"] == "spread", after["config"]
        assert {c["uid"]: c["cpus"] for c in after["claims"]} == {uid: cpus}, after["claims"]
        assert after["sharedPool"] == before["sharedPool"], after
        assert daemon.checkpoint_claims() == {uid: cpus}
        pod = get(kube, pod_path(NS, ex.name))
        assert pod["status"]["phase"] == "Running"
        assert [s["restartCount"] for s in pod["status"]["containerStatuses"]] == [0]
        kept = container_process(rig, pod, container["name"])
        assert (kept.pid, kept.cpus_allowed_list) == (workload.pid, cpus)
        assert kept.environ.get(f"DRA_CPUSET_{uid}") == cpus
        assert cdi_spec(rig, uid).is_file()
        wait_for(
            "the new driver container on the shared pool",
            lambda: container_process(rig, new, "dracpu").cpus_allowed_list == before["sharedPool"],
            20,
        )

        check_deleted(rig, kube, created, ex, daemon, [uid])
        released = daemon.status()
        assert CpuSet.parse(released["sharedPool"]) == CpuSet.parse(released["online"]), released
        assert claimed <= CpuSet.parse(released["free"]), released
        assert daemon.checkpoint_claims() == {}
    finally:
        created.cleanup()


def pod_token(rig: Rig, pod: dict[str, Any]) -> str:
    """The service-account token the kubelet projected into the driver pod (its
    ``kube-api-access-*`` volume under the kubelet root): the token dracpu itself uses."""
    volumes = rig.kubelet_root / "pods" / pod["metadata"]["uid"] / "volumes"
    (token,) = volumes.glob("kubernetes.io~projected/kube-api-access-*/token")
    return token.read_text().strip()


def test_deployed_service_account_cannot_read_secrets_or_write_other_nodes_slices(
    deployed: httpx.Client, rig: Rig
) -> None:
    """Issue 15's security check with the deployed pod's real token: RBAC gives it no Secrets
    (get and list, in its namespace and cluster-wide: 403), and the slice-node policy refuses
    it another node's ResourceSlice (403 with the policy's message)."""
    pod = wait_for("a Ready driver pod", lambda: ready_driver_pod(deployed), 120)
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    headers = {"Authorization": f"Bearer {pod_token(rig, pod)}"}
    with httpx.Client(
        base_url=rig.apiserver_url, verify=ctx, timeout=15.0, headers=headers
    ) as driver:
        who = driver.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert who.status_code == 201, who.text
        user = who.json()["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{SYSTEM}:dracpu", user
        assert user["extra"]["authentication.kubernetes.io/node-name"] == [rig.node_name], user
        # The token works for what dracpu does: its own node's slices.
        own = driver.get(
            "/apis/resource.k8s.io/v1/resourceslices",
            params={"fieldSelector": f"spec.nodeName={rig.node_name}"},
        )
        assert own.status_code == 200, own.text
        secrets = driver.get(f"/api/v1/namespaces/{SYSTEM}/secrets")
        assert secrets.status_code == 403, secrets.text
        for path in ("/api/v1/secrets", f"/api/v1/namespaces/{SYSTEM}/secrets/any"):
            r = driver.get(path)
            assert r.status_code == 403, f"GET {path}: {r.status_code} {r.text}"
        other = slice_body("other-node")
        r = driver.post("/apis/resource.k8s.io/v1/resourceslices", json=other)
        if r.status_code == 201:  # leave the rig clean even when the policy let it through
            deployed.delete(
                f"/apis/resource.k8s.io/v1/resourceslices/{r.json()['metadata']['name']}"
            )
        assert r.status_code == 403, r.text
        assert f"on node {rig.node_name} may write only that node's ResourceSlices" in message(r)


def test_memory_driver_value_registers_dra_memory_and_installs_its_classes(
    deployed: httpx.Client, rig: Rig
) -> None:
    """``helm upgrade --set memoryDriver.enabled=true``: the new pod registers ``dra.memory``
    with the kubelet too (its own rolling-update socket), publishes the node's memory devices
    as ``dra.memory`` slices, and the chart's memory DeviceClasses exist."""
    old = wait_for("a Ready driver pod", lambda: ready_driver_pod(deployed), 120)
    deploy(rig, "deploy", "--set", "memoryDriver.enabled=true")
    new = wait_for(
        "the driver pod with the memory driver Ready",
        lambda: ready_driver_pod(deployed, other_than=old["metadata"]["uid"]),
        120,
    )
    assert "--memory-driver=true" in new["spec"]["containers"][0]["args"]
    uid = new["metadata"]["uid"]
    wait_for(
        "the dra.memory registration socket",
        lambda: (rig.plugins_registry / f"dra.memory-{uid}-reg.sock").exists(),
        30,
    )

    def memory_devices() -> list[str]:
        r = deployed.get(
            "/apis/resource.k8s.io/v1/resourceslices",
            params={"fieldSelector": f"spec.nodeName={rig.node_name},spec.driver=dra.memory"},
        )
        assert r.status_code == 200, r.text
        return sorted(d["name"] for s in r.json()["items"] for d in s["spec"]["devices"])

    assert "memory-numa000" in wait_for("dra.memory slices", memory_devices, 60)
    for name in ("dra.memory", "dra.hugepages-2m", "dra.hugepages-1g"):
        r = deployed.get(f"/apis/resource.k8s.io/v1/deviceclasses/{name}")
        assert r.status_code == 200, f"DeviceClass {name}: {r.status_code}"


def test_chart_passes_helm_lint_against_the_rig_version(rig: Rig) -> None:
    chart = Chart(helm=build_helm())
    version = rig.versions["KUBERNETES_VERSION"].lstrip("v")
    done = chart.run("lint", "--strict", "--kube-version", version, str(CHART_DIR))
    assert done.returncode == 0, done.stdout + done.stderr
