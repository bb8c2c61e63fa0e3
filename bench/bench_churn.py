"""Benchmark: pods and claims churned through the rig (issue 15, load), in two layers.

    flock /var/lock/dracpu-rig.lock python bench/bench_churn.py [--pods 1000] [--floor-pods 200]
        [--window 2] [--shared 2] [--claims 1000] [--concurrency 1,8] [--rounds 3]
        [--layer both|pods|driver]

(a) **Real pods** (``--layer pods``). ``dracpu run`` is the rig node's ``dra.cpu`` driver, with
    ``--reserved-cpus=0``: the node has 2 CPUs, so one exclusive 1-CPU claim at a time is all
    the CPUs allow while the shared pool keeps CPU 0 (the scheduler sees a capacity of 1 and
    never allocates a second claim). ``--shared`` long-running claim-less pods run beside.
    ``--pods`` short-lived pods (the container exits at once, ``restartPolicy: Never``), each
    with a claim from a ResourceClaimTemplate, go through kube-scheduler, the kubelet, containerd
    (NRI pins the container) and dracpu; ``--window`` of them are in flight at a time (the
    others of the window wait for the CPU in the scheduler). A pod is deleted once it has
    Succeeded. First the floor: ``--floor-pods`` pods of the same shape without a claim, to
    show what the kubelet and containerd cost alone. Printed: pods/s, claims/s, dracpu's own
    prepare p50/p99 (the per-call time it logs with each prepared claim, and its
    ``dra_cpu_prepare_claim_duration_seconds`` histogram), the pod start latency (create ->
    container started, seen on a watch) of both runs, dracpu's RSS along the way, and leaks at
    the end: CDI specs, checkpoint entries, CPUs held, metadata dirs, slices, claims and pods.
(b) **dracpu's own ceiling** (``--layer driver``): a second ``dracpu run`` for a Node object of
    its own (``churn-bench-node``, no kubelet) on a synthetic 1,024-CPU machine (8 NUMA
    nodes, grouped mode). ``--claims`` pods with one 1-CPU claim each are scheduled there by
    the real kube-scheduler (so the claims are allocated by it); then grpcio, acting as the
    kubelet, calls NodePrepareResources / NodeUnprepareResources for each claim on dracpu's DRA
    socket, ``--concurrency`` calls at a time (each level in turn), for ``--rounds`` rounds.
    Printed: claims/s, p50/p99 per call, RSS after each round.

Exits 1 on any leak or failed pod. Needs root and the rig up (``just rig-up``); run it under
the rig lock. Everything it creates is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.figures import ms, pct  # noqa: E402
from tests.e2e.dra_driver import DracpuDaemon, daemon_argv  # noqa: E402
from tests.e2e.kube import (  # noqa: E402
    RESOURCE,
    SLICES,
    container_process,
    get,
    kube_client,
    node_slices,
    wait_for,
)
from tests.e2e.rig import Rig, current, rig_is_up  # noqa: E402

DRIVER = "dra.cpu"
CLASS = "dra.cpu"
BENCH_NODE = "churn-bench-node"
CDI_PREFIX = "dra.k8s.io-cpu_claim-"
POD_TIMEOUT = 180.0


# ------------------------------------------------------------------------------ figures
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/{pid}/status has no VmRSS line")


def histogram_quantile(metrics: str, name: str, q: float) -> float:
    """Prometheus' ``histogram_quantile`` (linear within the bucket) over ``name``'s buckets."""
    buckets: list[tuple[float, float]] = []
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M):
        buckets.append((float(m.group(1)), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def counter(metrics: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}(?:_total)?{{{want}}} (\S+)$" if want else rf"^{name}(?:_total)? (\S+)$"
    m = re.search(pattern, metrics, re.M)
    return float(m.group(1)) if m else 0.0


# ------------------------------------------------------------------------------ the pods
def pod_spec(rig: Rig, name: str, labels: dict[str, str], *, claim: bool) -> dict[str, Any]:
    """A short-lived host-network pod: busybox ``true``; with ``claim``, its container uses a
    1-CPU claim of the ``churn`` template."""
    container: dict[str, Any] = {
        "name": "main",
        "image": rig.busybox_image,
        "imagePullPolicy": "Never",
        "command": ["true"],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostNetwork": True,
        "dnsPolicy": "Default",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }
    if claim:
        container["resources"] = {"claims": [{"name": "cpus"}]}
        spec["resourceClaims"] = [{"name": "cpus", "resourceClaimTemplateName": "churn"}]
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


def shared_pod(rig: Rig, name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"churn-shared": "1"}},
        "spec": {
            "hostNetwork": True,
            "dnsPolicy": "Default",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": rig.busybox_image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                }
            ],
        },
    }


@dataclass
class PodTimes:
    created: float = 0.0
    bound: float = 0.0
    started: float = 0.0
    done: float = 0.0
    deleted: float = 0.0
    phase: str = ""


class Expired(Exception):
    """The watch's resourceVersion is too old (an ERROR event)."""


@dataclass
class PodWatch:
    """A watch on the namespace's pods in a thread: when each pod was seen started, done and
    deleted (local monotonic time; API timestamps have 1 s resolution)."""

    client: httpx.Client
    ns: str
    pods: dict[str, PodTimes] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def times(self, name: str) -> PodTimes:
        return self.pods.setdefault(name, PodTimes())

    def run(self) -> None:
        rv = self.resync()
        while not self.stop.is_set():
            params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "30"}
            try:
                with self.client.stream(
                    "GET", f"/api/v1/namespaces/{self.ns}/pods", params=params, timeout=None
                ) as r:
                    for line in r.iter_lines():
                        if self.stop.is_set():
                            return
                        if line.strip():
                            rv = self._event(json.loads(line)) or rv
            except httpx.HTTPError as exc:  # Reconnect from the last resourceVersion.
                if self.stop.is_set():
                    return
                self.error.append(exc)
                time.sleep(0.2)
            except Expired:  # 410: list again (what changed meanwhile is seen late, not lost).
                rv = self.resync()

    def resync(self) -> str:
        """List the pods, record each as seen now (and the missing as deleted); the list's
        resourceVersion."""
        body = get(self.client, f"/api/v1/namespaces/{self.ns}/pods")
        present = set()
        for obj in body["items"]:
            present.add(obj["metadata"]["name"])
            self._event({"type": "MODIFIED", "object": obj})
        now = time.monotonic()
        with self.cond:
            for name, t in self.pods.items():
                if t.phase and name not in present and not t.deleted:  # seen, now gone
                    t.deleted = now
                    t.done = t.done or now
            self.cond.notify_all()
        rv: str = body["metadata"]["resourceVersion"]
        return rv

    def _event(self, event: dict[str, Any]) -> str | None:
        obj = event["object"]
        if event["type"] == "ERROR":
            raise Expired(f"pod watch of {self.ns}: {obj}")
        now = time.monotonic()
        name = obj["metadata"]["name"]
        with self.cond:
            t = self.times(name)
            status = obj.get("status", {})
            t.phase = status.get("phase", "")
            states = [s.get("state", {}) for s in status.get("containerStatuses", [])]
            if not t.bound and obj.get("spec", {}).get("nodeName"):
                t.bound = now
            if not t.started and any("running" in s or "terminated" in s for s in states):
                t.started = now
            if not t.done and t.phase in ("Succeeded", "Failed"):
                t.done = now
                t.started = t.started or now
            if event["type"] == "DELETED" and not t.deleted:
                t.deleted = now
            self.cond.notify_all()
        rv: str | None = obj["metadata"].get("resourceVersion")
        return rv


@dataclass
class ChurnResult:
    label: str
    pods: int
    seconds: float
    start_latency: list[float]
    kubelet_start: list[float]
    failed: list[str]

    def line(self) -> str:
        return (
            f"{self.label}: {self.pods} pods in {self.seconds:.1f} s = "
            f"{self.pods / self.seconds:.2f} pods/s; start latency (create -> container "
            f"started) {ms(self.start_latency)}; bound -> started {ms(self.kubelet_start)}; "
            f"failed {len(self.failed)}"
        )


def churn(
    kube: httpx.Client,
    watch: PodWatch,
    make: Callable[[str], dict[str, Any]],
    prefix: str,
    count: int,
    window: int,
    label: str,
    progress: Callable[[int], None] = lambda done: None,
    max_seconds: float = float("inf"),
) -> ChurnResult:
    """Create ``count`` pods from ``make(name)``, ``window`` in flight; delete each once done;
    return when every one is gone. No pod is created after ``max_seconds`` (the result says
    how many ran)."""
    ns = watch.ns
    inflight: list[str] = []
    began = time.monotonic()
    done = 0

    def reap() -> None:
        nonlocal done
        for name in [n for n in inflight if watch.times(n).done]:
            r = kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
            assert r.status_code in (200, 202, 404), f"DELETE pod {name}: {r.status_code}"
            inflight.remove(name)
            done += 1
            if done % 50 == 0:
                progress(done)

    created = 0
    for i in range(count):
        if time.monotonic() - began > max_seconds:
            print(f"{label}: --max-minutes reached after {i} of {count} pods", flush=True)
            break
        with watch.cond:
            while len(inflight) >= window:
                watch.cond.wait(0.5)
                reap()
                oldest = min((watch.times(n).created for n in inflight), default=time.monotonic())
                if time.monotonic() - oldest > POD_TIMEOUT:
                    raise TimeoutError(f"{label}: pods {inflight} not done in {POD_TIMEOUT} s")
        name = f"{prefix}-{i:04d}"
        with watch.cond:
            watch.times(name).created = time.monotonic()
        r = kube.post(f"/api/v1/namespaces/{ns}/pods", json=make(name))
        assert r.status_code == 201, f"POST pod {name}: {r.status_code} {r.text[:300]}"
        inflight.append(name)
        created += 1
    with watch.cond:
        while inflight:
            watch.cond.wait(0.5)
            reap()
            if inflight and time.monotonic() - watch.times(inflight[0]).created > POD_TIMEOUT:
                raise TimeoutError(f"{label}: pods {inflight} not done in {POD_TIMEOUT} s")
    names = [f"{prefix}-{i:04d}" for i in range(created)]
    wait_for(f"{label} pods deleted", lambda: all(watch.times(n).deleted for n in names), 120)
    seconds = time.monotonic() - began
    lat = [watch.times(n).started - watch.times(n).created for n in names]
    bound = [watch.times(n).started - watch.times(n).bound for n in names if watch.times(n).bound]
    failed = [n for n in names if watch.times(n).phase == "Failed"]
    return ChurnResult(label, created, seconds, lat, bound, failed)


# ------------------------------------------------------------------------------ dracpu
def metrics_url(daemon: DracpuDaemon) -> str:
    """The daemon's /metrics, on the port its status reports (``--bind-address=...:0``)."""
    bound = wait_for("the HTTP endpoint in dracpu status", lambda: daemon.status().get("endpoint"))
    port = str(bound[0]).rsplit(":", 1)[1]
    return f"http://127.0.0.1:{port}/metrics"


def log_events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@dataclass(frozen=True)
class Leaks:
    """What is left once every pod is gone; all empty = no leak."""

    cdi_specs: list[str]
    checkpoint_claims: list[str]
    cpus_held: str
    metadata_dirs: list[str]
    claims_in_api: list[str]
    pods_in_api: list[str]
    slices_changed: bool
    kubelet_checkpoint: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for name in (
            "cdi_specs",
            "checkpoint_claims",
            "metadata_dirs",
            "claims_in_api",
            "kubelet_checkpoint",
        ):
            if getattr(self, name):
                out.append(f"{name}: {getattr(self, name)}")
        if self.pods_in_api:
            out.append(f"pods_in_api: {self.pods_in_api}")
        if self.cpus_held:
            out.append(f"cpus held: {self.cpus_held}")
        if self.slices_changed:
            out.append("the node's ResourceSlices differ from those at the start")
        return out


def slice_devices(kube: httpx.Client, node: str) -> list[Any]:
    body = get(kube, SLICES, fieldSelector=f"spec.nodeName={node},spec.driver={DRIVER}")
    return sorted(
        json.dumps(d, sort_keys=True) for s in body["items"] for d in s["spec"]["devices"]
    )


def files(directory: Path, pattern: str) -> list[str]:
    return [str(p) for p in directory.glob(pattern)] if directory.is_dir() else []


def kubelet_claims(path: Path, ns: str) -> list[str]:
    """Entries of namespace ``ns`` in the kubelet's DRA checkpoint (``dra_manager_state``)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [f"{path.name} mentions {ns} ({text.count(ns)} times)"] if ns in text else []


def checkpoint_claims(state_dir: Path) -> list[str]:
    path = state_dir / "checkpoint.json"
    if not path.exists():  # Nothing prepared yet.
        return []
    doc = json.loads(path.read_text())
    body = doc["body"]
    if isinstance(body, str):
        body = json.loads(body)
    return [c.get("uid", "?") for c in body.get("claims", [])]


def leaks(
    kube: httpx.Client,
    daemon: DracpuDaemon,
    ns: str,
    node: str,
    cdi_dir: Path,
    metadata_root: Path,
    slices_before: list[Any],
    free_before: str,
    files_before: set[str],
    kubelet_state: Path,
) -> Leaks:
    status = daemon.status()
    held = (
        "" if status.get("free") == free_before else f"free {status.get('free')} != {free_before}"
    )
    held += "".join(f" {c.get('uid')}:{c.get('cpus')}" for c in status.get("claims") or [])
    meta = sorted(set(files(metadata_root, "*")) - files_before)
    claims = get(kube, f"{RESOURCE}/namespaces/{ns}/resourceclaims")["items"]
    pods = get(kube, f"/api/v1/namespaces/{ns}/pods")["items"]
    return Leaks(
        cdi_specs=sorted(set(files(cdi_dir, f"{CDI_PREFIX}*")) - files_before),
        checkpoint_claims=checkpoint_claims(daemon.state_dir),
        cpus_held=held.strip(),
        metadata_dirs=meta,
        claims_in_api=[c["metadata"]["name"] for c in claims],
        pods_in_api=[
            p["metadata"]["name"]
            for p in pods
            if p["metadata"]["labels"].get("churn-shared") != "1"
        ],
        slices_changed=slice_devices(kube, node) != slices_before,
        kubelet_checkpoint=kubelet_claims(kubelet_state, ns),
    )


# ------------------------------------------------------------------------------ set-up
@contextmanager
def namespace(kube: httpx.Client, name: str, *, force: bool = False) -> Iterator[str]:
    """A fresh namespace, deleted at the end with all in it (``force``: pods at once, for
    pods on a node without a kubelet; else gracefully, through the kubelet)."""
    r = kube.post("/api/v1/namespaces", json={"metadata": {"name": name}})
    assert r.status_code == 201, f"POST namespace {name}: {r.status_code} {r.text[:300]}"
    try:
        wait_for(
            f"ServiceAccount default in {name}",
            lambda: (
                kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default").status_code == 200
            ),
            30,
        )
        yield name
    finally:
        if force:
            kube.delete(f"/api/v1/namespaces/{name}/pods", params={"gracePeriodSeconds": "0"})
        kube.delete(f"/api/v1/namespaces/{name}")
        wait_for(
            f"namespace {name} gone",
            lambda: kube.get(f"/api/v1/namespaces/{name}").status_code == 404,
            180,
        )


@contextmanager
def device_class(kube: httpx.Client) -> Iterator[None]:
    path = f"{RESOURCE}/deviceclasses/{CLASS}"
    made = False
    if kube.get(path).status_code == 404:
        body = {
            "metadata": {"name": CLASS},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        }
        r = kube.post(f"{RESOURCE}/deviceclasses", json=body)
        assert r.status_code == 201, r.text
        made = True
    try:
        yield
    finally:
        if made:
            kube.delete(path)


def claim_spec(selector_node: str | None = None) -> dict[str, Any]:
    """One request of 1 CPU (consumable capacity ``dra.cpu/cpu``) of the ``dra.cpu`` class."""
    exactly: dict[str, Any] = {
        "deviceClassName": CLASS,
        "capacity": {"requests": {"dra.cpu/cpu": "1"}},
    }
    return {"devices": {"requests": [{"name": "cpus", "exactly": exactly}]}}


class Unregistered(DracpuDaemon):
    """A daemon no kubelet registers (the bench node has none): started once it runs."""

    def registrations(self) -> list[dict[str, Any]]:
        return [] if self.proc is None else [{"op": "registered", "registered": True}]


@contextmanager
def daemon(
    rig: Rig, tmp: Path, name: str, *, registered: bool = True, **flags: str
) -> Iterator[DracpuDaemon]:
    state = tmp / f"{name}.state"
    log = tmp / f"{name}.log"
    argv = daemon_argv(rig, state, log_format="json", **flags)
    d = (DracpuDaemon if registered else Unregistered)(rig, argv, log, state)
    try:
        yield d
    finally:
        d.stop()


def listening(path: Path) -> bool:
    """Whether a process accepts connections on the unix socket ``path`` (a stale file left
    by a killed driver does not count)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------ (a) real pods
def layer_pods(rig: Rig, kube: httpx.Client, args: argparse.Namespace, tmp: Path) -> list[str]:
    """Returns the problems found (leaks, failed pods); prints the figures."""
    reg = rig.plugins_registry / f"{DRIVER}-reg.sock"
    if listening(reg):
        raise SystemExit(f"a {DRIVER} driver is already registered ({reg}): undeploy it first")
    problems: list[str] = []
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        stack.enter_context(device_class(kube))
        # Entered before the namespace: its pods are deleted through the kubelet (claims
        # unprepared) before the driver stops.
        d = stack.enter_context(daemon(rig, tmp, "dracpu-rig", reserved_cpus="0"))
        d.start()
        ns = stack.enter_context(namespace(kube, f"churn-{tag}"))
        assert d.proc is not None
        pid = d.proc.pid
        metrics = metrics_url(d)
        wait_for("dracpu's slice on the rig node", lambda: node_slices(kube, rig) or None, 30)
        slices_before = slice_devices(kube, rig.node_name)
        free_before = str(d.status().get("free"))
        metadata_root = rig.kubelet_root / "plugins" / DRIVER / "dra-device-metadata"
        files_before = set(files(rig.cdi_dir, f"{CDI_PREFIX}*") + files(metadata_root, "*"))
        r = kube.post(
            f"{RESOURCE}/namespaces/{ns}/resourceclaimtemplates",
            json={"metadata": {"name": "churn"}, "spec": {"spec": claim_spec()}},
        )
        assert r.status_code == 201, r.text
        watch_client = stack.enter_context(kube_client(rig))
        watch = PodWatch(watch_client, ns)
        thread = threading.Thread(target=watch.run, daemon=True)
        thread.start()
        stack.callback(watch.stop.set)
        for i in range(args.shared):
            r = kube.post(f"/api/v1/namespaces/{ns}/pods", json=shared_pod(rig, f"shared-{i}"))
            assert r.status_code == 201, r.text
        wait_for(
            "shared pods started",
            lambda: all(watch.times(f"shared-{i}").started for i in range(args.shared)),
            60,
        )
        rss: list[tuple[int, float]] = [(0, rss_mib(pid))]
        print(f"dracpu RSS at the start: {rss[0][1]:.1f} MiB", flush=True)
        before = httpx.get(metrics).text

        floor = None
        if args.floor_pods:
            floor = churn(
                kube,
                watch,
                lambda n: pod_spec(rig, n, {"churn": "floor"}, claim=False),
                "floor",
                args.floor_pods,
                args.window,
                "floor (no claim)",
            )
            print(floor.line(), flush=True)

        def progress(done: int) -> None:
            rss.append((done, rss_mib(pid)))
            if done % 100 == 0:
                print(f"  {done} claim pods done, dracpu RSS {rss[-1][1]:.1f} MiB", flush=True)

        began_wall = time.time()
        claimed = churn(
            kube,
            watch,
            lambda n: pod_spec(rig, n, {"churn": "claim"}, claim=True),
            "claim",
            args.pods,
            args.window,
            "with a claim",
            progress,
            min(60 * args.max_minutes, args.stop_at - time.time()),
        )
        wait_for(
            "dracpu holding no claim",
            lambda: not checkpoint_claims(d.state_dir),
            60,
        )
        after = httpx.get(metrics).text
        rss.append((args.pods, rss_mib(pid)))
        # The shared pods got CPU 1 back (no claim holds it).
        shared_cpus = []
        for i in range(args.shared):
            pod = get(kube, f"/api/v1/namespaces/{ns}/pods/shared-{i}")
            shared_cpus.append(container_process(rig, pod, "main").cpus_allowed_list)
        found = leaks(
            kube,
            d,
            ns,
            rig.node_name,
            rig.cdi_dir,
            metadata_root,
            slices_before,
            free_before,
            files_before,
            rig.kubelet_root / "dra_manager_state",
        )
        events = [
            e
            for e in log_events(d.log)
            if e.get("ts", 0) >= began_wall and e.get("msg", "").startswith("claim ")
        ]
    prepared = [e for e in events if e["msg"].startswith("claim prepared")]
    unprepared = counter(after, "dra_cpu_unprepare_claims", result="success") - counter(
        before, "dra_cpu_unprepare_claims", result="success"
    )
    durations = [float(e["seconds"]) for e in prepared if "seconds" in e]
    ok = counter(after, "dra_cpu_prepare_claims", result="success") - counter(
        before, "dra_cpu_prepare_claims", result="success"
    )
    errors = counter(after, "dra_cpu_prepare_claims", result="error") - counter(
        before, "dra_cpu_prepare_claims", result="error"
    )
    print(claimed.line())
    print(
        f"claims: {int(ok)} prepared (+{int(errors)} prepare errors), {int(unprepared)} "
        f"unprepared, in {claimed.seconds:.1f} s = {ok / claimed.seconds:.2f} claims/s "
        f"(window {args.window}, one claim fits at a time)"
    )
    print(f"dracpu prepare per call under this load (its log): {ms(durations)}")
    print(
        "dracpu prepare histogram (dra_cpu_prepare_claim_duration_seconds, whole run, "
        f"interpolated in upstream's buckets): p50 "
        f"{1000 * histogram_quantile(after, 'dra_cpu_prepare_claim_duration_seconds', 0.5):.1f}"
        f" ms, p99 "
        f"{1000 * histogram_quantile(after, 'dra_cpu_prepare_claim_duration_seconds', 0.99):.1f}"
        " ms"
    )
    if floor is not None:
        extra = pct(claimed.start_latency, 0.5) - pct(floor.start_latency, 0.5)
        print(f"start latency with a claim minus without, p50: {1000 * extra:+.0f} ms")
    print(
        f"dracpu RSS: start {rss[0][1]:.1f} MiB, end {rss[-1][1]:.1f} MiB, min "
        f"{min(v for _, v in rss):.1f}, max {max(v for _, v in rss):.1f} (every 50 pods)"
    )
    print(f"shared pods' Cpus_allowed_list at the end: {shared_cpus}")
    print(f"leaks at the end: {found.problems() or 'none'}")
    problems += found.problems()
    problems += [f"pod {n} Failed" for n in claimed.failed + (floor.failed if floor else [])]
    if int(ok) != claimed.pods:
        problems.append(f"{int(ok)} claims prepared for {claimed.pods} pods")
    if any(c != "0-1" for c in shared_cpus):
        problems.append(f"shared pods not on every CPU with no claim: {shared_cpus}")
    return problems


# ------------------------------------------------------------------------------ (b) the driver
def bench_node(kube: httpx.Client) -> None:
    node = {
        "metadata": {
            "name": BENCH_NODE,
            "labels": {"kubernetes.io/hostname": BENCH_NODE, "churn-bench": "1"},
        }
    }
    r = kube.post("/api/v1/nodes", json=node)
    assert r.status_code == 201, f"POST node: {r.status_code} {r.text[:300]}"
    res = {"cpu": "1024", "memory": "1Ti", "pods": "5000"}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "status": {
            "capacity": res,
            "allocatable": res,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Bench",
                    "message": "no kubelet: a node for bench_churn.py",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }
    r = kube.patch(
        f"/api/v1/nodes/{BENCH_NODE}/status",
        json=status,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, f"PATCH node status: {r.status_code} {r.text[:300]}"


def layer_driver(rig: Rig, kube: httpx.Client, args: argparse.Namespace, tmp: Path) -> list[str]:
    import grpc

    from tests.daemon.support import dra_api
    from tests.support.sysfs_tree import SysfsSpec, write_tree

    api = dra_api("v1")
    problems: list[str] = []
    root = tmp / "bench-node"
    sysfs = write_tree(root, SysfsSpec(sockets=2, numa_per_socket=4, cores_per_numa=64, threads=2))
    kubelet_root, cdi_dir = root / "kubelet", root / "cdi"
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        stack.enter_context(device_class(kube))
        bench_node(kube)
        stack.callback(
            lambda: kube.delete(SLICES, params={"fieldSelector": f"spec.nodeName={BENCH_NODE}"})
        )
        stack.callback(lambda: kube.delete(f"/api/v1/nodes/{BENCH_NODE}"))
        ns = stack.enter_context(namespace(kube, f"churn-driver-{tag}", force=True))
        d = stack.enter_context(
            daemon(
                rig,
                tmp,
                "dracpu-bench-node",
                registered=False,
                hostname_override=BENCH_NODE,
                sysfs_root=str(sysfs),
                kubelet_root_dir=str(kubelet_root),
                cdi_dir=str(cdi_dir),
                nri_socket=str(root / "no-nri.sock"),
            )
        )
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        sock = wait_for(
            "the DRA socket", lambda: next(iter(kubelet_root.glob("plugins/*/dra.sock")), None), 30
        )
        wait_for(
            "slices of the bench node",
            lambda: len(slice_devices(kube, BENCH_NODE)) >= 8 or None,
            60,
        )
        slices_before = slice_devices(kube, BENCH_NODE)
        print(
            f"bench node: 1024 CPUs, {len(slices_before)} grouped devices; "
            f"dracpu RSS {rss_mib(pid):.1f} MiB",
            flush=True,
        )
        n = args.claims
        t0 = time.monotonic()
        for i in range(n):
            r = kube.post(
                f"{RESOURCE}/namespaces/{ns}/resourceclaims",
                json={"metadata": {"name": f"c{i:04d}"}, "spec": claim_spec()},
            )
            assert r.status_code == 201, r.text
            pod = {
                "metadata": {"name": f"p{i:04d}"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": BENCH_NODE},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": rig.pause_image,
                            "resources": {"claims": [{"name": "cpus"}]},
                        }
                    ],
                    "resourceClaims": [{"name": "cpus", "resourceClaimName": f"c{i:04d}"}],
                },
            }
            r = kube.post(f"/api/v1/namespaces/{ns}/pods", json=pod)
            assert r.status_code == 201, r.text
        created = time.monotonic() - t0

        def allocated() -> list[dict[str, Any]] | None:
            items = get(kube, f"{RESOURCE}/namespaces/{ns}/resourceclaims")["items"]
            done = [c for c in items if c.get("status", {}).get("allocation")]
            return items if len(done) == n else None

        claims = wait_for(f"{n} claims allocated by kube-scheduler", allocated, 600, 2.0)
        scheduled = time.monotonic() - t0
        print(
            f"{n} claims + pods created in {created:.1f} s; all allocated by kube-scheduler "
            f"after {scheduled:.1f} s",
            flush=True,
        )
        refs = [(ns, c["metadata"]["name"], c["metadata"]["uid"]) for c in claims]
        channel = grpc.insecure_channel(f"unix://{sock}")
        stack.callback(channel.close)
        stub = api.grpc.DRAPluginStub(channel)

        def call(op: str, ref: tuple[str, str, str]) -> tuple[float, str]:
            pb = [api.pb2.Claim(namespace=ref[0], name=ref[1], uid=ref[2])]
            t = time.perf_counter()
            if op == "prepare":
                resp = stub.NodePrepareResources(
                    api.pb2.NodePrepareResourcesRequest(claims=pb), timeout=60
                )
            else:
                resp = stub.NodeUnprepareResources(
                    api.pb2.NodeUnprepareResourcesRequest(claims=pb), timeout=60
                )
            return time.perf_counter() - t, resp.claims[ref[2]].error

        rss = [rss_mib(pid)]
        for level in args.concurrency:
            with ThreadPoolExecutor(level) as pool:
                for rnd in range(1, args.rounds + 1):
                    line = [f"concurrency {level}, round {rnd}:"]
                    for op in ("prepare", "unprepare"):
                        t = time.perf_counter()
                        results = list(pool.map(lambda ref, op=op: call(op, ref), refs))
                        wall = time.perf_counter() - t
                        errs = [e for _, e in results if e]
                        if errs:
                            problems.append(f"{line[0]} {op}: {len(errs)} errors: {errs[0]}")
                        line.append(
                            f"{op} {n / wall:.0f} claims/s ({ms([s for s, _ in results])}, "
                            f"{len(errs)} errors);"
                        )
                    rss.append(rss_mib(pid))
                    line.append(f"RSS {rss[-1]:.1f} MiB")
                    print(" ".join(line), flush=True)
        status_cdi = sorted(p.name for p in cdi_dir.glob(f"{CDI_PREFIX}*"))
        held = checkpoint_claims(d.state_dir)
        changed = slice_devices(kube, BENCH_NODE) != slices_before
        print(
            f"driver layer: RSS start {rss[0]:.1f} MiB, end {rss[-1]:.1f} MiB; leaks: CDI specs "
            f"{len(status_cdi)}, checkpoint claims {len(held)}, slices changed {changed}"
        )
        if status_cdi or held or changed:
            problems.append(f"driver layer leaks: {status_cdi[:3]} {held[:3]} {changed}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=("both", "pods", "driver"), default="both")
    parser.add_argument("--pods", type=int, default=1000, help="claim pods in (a)")
    parser.add_argument("--floor-pods", type=int, default=200, help="claim-less pods in (a)")
    parser.add_argument("--window", type=int, default=2, help="claim pods in flight in (a)")
    parser.add_argument(
        "--max-minutes", type=float, default=float("inf"), help="no claim pod created after"
    )
    parser.add_argument(
        "--stop-at", type=float, default=float("inf"), help="epoch s: no claim pod created after"
    )
    parser.add_argument("--shared", type=int, default=2, help="long-running shared pods in (a)")
    parser.add_argument("--claims", type=int, default=1000, help="claims in (b)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[1, 8],
        help="calls in flight in (b), a comma-separated list of levels",
    )
    parser.add_argument("--rounds", type=int, default=3, help="prepare+unprepare rounds in (b)")
    args = parser.parse_args()
    # A timeout's SIGTERM unwinds like an error: every clean-up below still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("bench_churn: needs root (the rig)", file=sys.stderr)
        return 2
    rig = current()
    if not rig_is_up(rig):
        print("bench_churn: rig not running: run `just rig-up`", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="churn-", dir="/tmp"))
    problems: list[str] = []
    ok = False
    try:
        with kube_client(rig) as kube:
            # The driver layer first: its length is bounded by --claims; the pod churn's by
            # --max-minutes / --stop-at.
            if args.layer in ("both", "driver"):
                try:
                    problems += layer_driver(rig, kube, args, tmp)
                except Exception as exc:  # Still measure the pods; the error is reported.
                    traceback.print_exc()
                    problems.append(f"driver layer: {type(exc).__name__}: {exc}")
            if args.layer in ("both", "pods"):
                problems += layer_pods(rig, kube, args, tmp)
        ok = not problems
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"daemon logs kept in {tmp}", file=sys.stderr)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
