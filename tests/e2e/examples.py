"""Upstream's ``hack/examples`` on the rig (tests/e2e/data/upstream, copied unchanged) with the
claims turned into ResourceClaimTemplates of the same spec: the only edits are the CPU counts
(this machine has 2 CPUs, none reserved) and the image (the rig's local pause image). Checks of a
running example pod: the claim's ``status.devices[].data``, the container's env
(``DRA_CPUSET_<uid>``) and CPU affinity read from ``/proc`` of its init process, the CDI spec and
dracpu's own view (``dracpu status``); and of its deletion: CDI spec removed, claim released.
Shared by the tests that start ``dracpu run`` themselves and the deployed-driver tests."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from tests.e2e.kube import (
    RESOURCE,
    Created,
    cdi_spec,
    claim_of,
    claim_status_cpus,
    container_process,
    node_slices,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

NS = "default"
EXAMPLES = Path(__file__).parent / "data" / "upstream"


class StatusSource(Protocol):
    """A running dracpu whose ``dracpu status --json`` document can be read: a daemon a test
    started (:class:`tests.e2e.dra_driver.DracpuDaemon`) or the deployed DaemonSet's."""

    def status(self) -> dict[str, Any]: ...


def upstream_example(name: str) -> list[dict[str, Any]]:
    with (EXAMPLES / f"{name}.yaml").open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _scaled(spec: dict[str, Any], cpus: int) -> dict[str, Any]:
    """The claim spec with its CPU amount (capacity ``dra.cpu/cpu`` or ``count``) set to ``cpus``;
    asserts nothing else differs."""
    out = copy.deepcopy(spec)
    for req in out["devices"]["requests"]:
        exactly = req["exactly"]
        if "capacity" in exactly:
            exactly["capacity"]["requests"]["dra.cpu/cpu"] = str(cpus)
        else:
            exactly["count"] = cpus
    return out


class Example:
    """Upstream's pod and claims, as templates of this test (names suffixed with a tag)."""

    def __init__(
        self,
        rig: Rig,
        docs: list[dict[str, Any]],
        cpus: int = 1,
        *,
        pod_index: int = 0,
        replicated_cpus: bool = True,
    ) -> None:
        """``pod_index``: which of the example's pods (with the claims it names);
        ``replicated_cpus``: the containers repeat the claim's CPU count (rewritten to ``cpus``),
        as the examples without node-allocatable mapping do."""
        self.tag = uuid.uuid4().hex[:6]
        pod = [d for d in docs if d["kind"] == "Pod"][pod_index]
        wanted = {r["resourceClaimName"] for r in pod["spec"]["resourceClaims"]}
        self.claims = {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "ResourceClaim" and d["metadata"]["name"] in wanted
        }
        self.pod = copy.deepcopy(pod)
        self.pod["metadata"]["name"] = self.name = f"{pod['metadata']['name']}-{self.tag}"
        spec = self.pod["spec"]
        spec["terminationGracePeriodSeconds"] = 2
        for ref in spec["resourceClaims"]:
            ref["resourceClaimTemplateName"] = self._template(ref.pop("resourceClaimName"))
        for c in spec["containers"]:
            c["image"], c["imagePullPolicy"] = rig.pause_image, "Never"
            for part in ("requests", "limits") if replicated_cpus else ():
                if "cpu" in c["resources"].get(part, {}):
                    c["resources"][part]["cpu"] = str(cpus)
        self.cpus = cpus

    def _template(self, claim: str) -> str:
        return f"{claim}-{self.tag}"

    def create(self, created: Created, config: list[dict[str, Any]] | None = None) -> None:
        for name, obj in self.claims.items():
            spec = _scaled(obj["spec"], self.cpus)
            if config is not None:
                spec["devices"]["config"] = config
            created.post(
                f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
                {"metadata": {"name": self._template(name)}, "spec": {"spec": spec}},
            )
        created.pod(self.pod)


def check_pod(
    rig: Rig, kube: httpx.Client, ex: Example, daemon: StatusSource
) -> dict[str, tuple[str, str]]:
    """The running pod's claims: env, claim status and CPU affinity agree. Returns
    {container: (claim uid, cpus)}."""
    pod = wait_running(kube, NS, ex.name, timeout=90)
    out: dict[str, tuple[str, str]] = {}
    for c in pod["spec"]["containers"]:
        (ref,) = [r["name"] for r in c["resources"]["claims"]]
        claim = claim_of(kube, pod, ref)
        uid = claim["metadata"]["uid"]
        assert [r["uid"] for r in claim["status"]["reservedFor"]] == [pod["metadata"]["uid"]]
        cpus = claim_status_cpus(kube, claim)
        proc = container_process(rig, pod, c["name"])
        env_name = f"DRA_CPUSET_{uid}"  # upstream's name keeps the UID's dashes
        assert proc.environ.get(env_name) == cpus, (env_name, proc.environ)
        assert proc.cpus_allowed_list == cpus, (c["name"], proc.cpus_allowed_list, cpus)
        assert cdi_spec(rig, uid).is_file()
        out[c["name"]] = (uid, cpus)
    held = {c["uid"]: c["cpus"] for c in daemon.status()["claims"]}
    assert held == {uid: cpus for uid, cpus in out.values()}, held
    return out


def check_deleted(
    rig: Rig,
    kube: httpx.Client,
    created: Created,
    ex: Example,
    daemon: StatusSource,
    uids: list[str],
) -> None:
    created.delete_pod(ex.name)
    for uid in uids:
        wait_for(f"CDI spec of {uid} removed", lambda u=uid: not cdi_spec(rig, u).exists(), 30)
    wait_for("claims released", lambda: not daemon.status()["claims"], 30)


def allocated_devices(kube: httpx.Client, rig: Rig) -> list[str]:
    slices = wait_for("published slice", lambda: node_slices(kube, rig), 20)
    return sorted(d["name"] for s in slices for d in s["spec"]["devices"])
