"""dracpu deployed by `just deploy` on the rig: the image imported into the rig's containerd,
the chart installed with the rig's paths and explicit API endpoint, the DaemonSet's pod started
by the rig's real kubelet, slices published, a `helm upgrade` with a changed flag rolling the
pod, and `just undeploy` removing the chart's objects. Needs the daemon (`dracpu run`) and the
rig's kubelet; the image build and import take about a minute."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dracpu.cli import build_parser
from tests.deploy.chart import CHART_DIR, REPO_ROOT, Chart, build_helm
from tests.e2e.node_agent import kube_client
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

NS = "kube-system"
DS = f"/apis/apps/v1/namespaces/{NS}/daemonsets/dracpu"


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
    r = kube.get(f"/api/v1/namespaces/{NS}/pods", params={"labelSelector": "app=dracpu"})
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


def wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_pod_runs_on_the_rig_node_and_publishes_slices(deployed: httpx.Client, rig: Rig) -> None:
    # helm --wait returns once the DaemonSet's pod is scheduled and started; the readiness probe
    # (/healthz: slices in sync, registered, NRI connected) turns it Ready a few seconds later.
    pods = wait_for("a Ready driver pod", lambda: [p for p in driver_pods(deployed) if ready(p)])
    assert len(driver_pods(deployed)) == 1
    assert pods[0]["spec"]["nodeName"] == rig.node_name
    assert pods[0]["spec"]["hostNetwork"] is True
    slices = wait_for("the node's slices", lambda: node_slices(deployed, rig))
    assert all(s["metadata"]["ownerReferences"][0]["kind"] == "Node" for s in slices)


def test_helm_upgrade_with_a_changed_flag_rolls_the_pod(deployed: httpx.Client, rig: Rig) -> None:
    (pod,) = wait_for("a Ready driver pod", lambda: [p for p in driver_pods(deployed) if ready(p)])
    before = pod["metadata"]["uid"]
    deploy(rig, "deploy", "--set", "args.strategy=spread")

    def rolled() -> dict[str, Any] | None:
        pods = [p for p in driver_pods(deployed) if p["metadata"]["uid"] != before]
        return pods[0] if pods and ready(pods[0]) else None

    pod = wait_for("the new driver pod", rolled)
    assert "--strategy=spread" in pod["spec"]["containers"][0]["args"]
    assert wait_for("the node's slices", lambda: node_slices(deployed, rig))


def test_chart_passes_helm_lint_against_the_rig_version(rig: Rig) -> None:
    chart = Chart(helm=build_helm())
    version = rig.versions["KUBERNETES_VERSION"].lstrip("v")
    done = chart.run("lint", "--strict", "--kube-version", version, str(CHART_DIR))
    assert done.returncode == 0, done.stdout + done.stderr
