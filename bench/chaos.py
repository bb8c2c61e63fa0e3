"""``just chaos``: dracpu on the rig (real kubelet, containerd, scheduler, apiserver) under seeded
faults while pods with claims churn beside shared pods; prints a table and exits 1 on any
invariant violation.

    flock /var/lock/dracpu-rig.lock python bench/chaos.py --seed 1 --minutes 8

``dracpu run`` is started as the node's ``dra.cpu`` driver (as the e2e tests start it), first in
grouped mode, then, after a drain, in individual mode (a fresh state dir). Pods: at most one
with a 1-CPU claim at a time (the rig has 2 CPUs and the shared pool must not be empty) and up
to two shared pods, created and deleted at seeded moments. Faults, in a seeded order:

- kill -9 of dracpu at a random moment; dracpu restarted with ``DRACPU_TEST_CRASH_AT`` so it
  dies inside a prepare, an unprepare or the NRI CreateContainer handler, then a pod is made or
  deleted to get there (see ``dracpu/daemon/owner.py``);
- a containerd restart (its NRI socket goes away and comes back; dracpu reconnects);
- a kubelet restart;
- an apiserver outage of 10-60 s (the process stopped, then started again with up.sh's command
  line).

A dead dracpu is restarted at once (the DaemonSet's job). After each fault, and at the end with
every pod gone, the invariants of ``tests/reliability/invariants.py`` are checked against the
checkpoint, the CDI dir, ``dracpu status``, ``/proc/<pid>/status`` of every container and the
API's claims and slices, polled until they hold or ``--settle`` seconds pass.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from dracpu.daemon.owner import CRASH_EXIT_STATUS  # noqa: E402
from dracpu.daemon.status import read_status  # noqa: E402
from dracpu.sysfs import read_topology  # noqa: E402
from tests.e2e.dra_driver import DracpuDaemon, daemon_argv  # noqa: E402
from tests.e2e.kube import (  # noqa: E402
    RESOURCE,
    busybox_container,
    container_process,
    kube_client,
    node_slices,
    pod_body,
)
from tests.e2e.rig import (  # noqa: E402
    Rig,
    apiserver_ready,
    current,
    enabled_feature_gates,
    main_apiserver_argv,
    rig_is_up,
)
from tests.reliability import invariants as inv  # noqa: E402

NS = "default"
PREFIX = "chaos"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Run:
    rig: Rig
    kube: httpx.Client
    rng: random.Random
    work: Path
    settle: float
    mode: str = "grouped"
    daemon: DracpuDaemon | None = None
    armed: str = ""
    faults: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    restarts: int = 0
    starts: int = 0
    serial: int = 0

    # --- dracpu ---------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.work / f"state-{self.mode}"

    def start_daemon(self, crash_at: str = "") -> None:
        argv = daemon_argv(self.rig, self.state_dir, cpu_device_mode=self.mode)
        argv.append("--release-grace-period=5")
        self.starts += 1  # One log per start: DracpuDaemon counts registrations in its log.
        logfile = self.work / f"dracpu-{self.mode}-{self.starts}.log"
        drv = DracpuDaemon(self.rig, argv, logfile, self.state_dir)
        if crash_at:
            os.environ["DRACPU_TEST_CRASH_AT"] = crash_at
        self.daemon = drv
        try:
            drv.start(timeout=60)
        except AssertionError:
            # An armed daemon may meet its event while starting (a kubelet retry): that is
            # the crash asked for; :meth:`tick` restarts it.
            if not (crash_at and drv.proc is not None and drv.proc.poll() == CRASH_EXIT_STATUS):
                raise
        finally:
            os.environ.pop("DRACPU_TEST_CRASH_AT", None)
        point, _, event = crash_at.partition("@")
        self.armed = f"{event} at {point}" if crash_at else ""

    def kill_daemon(self) -> int | None:
        drv = self.daemon
        if drv is None or drv.proc is None:
            return None
        if drv.proc.poll() is None:
            drv.proc.send_signal(signal.SIGKILL)
        return drv.proc.wait()

    def tick(self) -> None:
        """Restart dracpu if it died (what its DaemonSet would do); count a crash point hit."""
        drv = self.daemon
        if drv is not None and drv.proc is not None and drv.proc.poll() is not None:
            code = drv.proc.returncode
            if self.armed and code == CRASH_EXIT_STATUS:
                self.fault(f"dracpu killed inside {self.armed}")
            drv.proc = None
            self.restarts += 1
            self.start_daemon()  # Clears ``armed``.

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1
        log(f"fault: {name}")

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            with contextlib.suppress(httpx.HTTPError):
                value = check()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    # --- pods -----------------------------------------------------------------------------
    def pods(self) -> list[dict[str, Any]]:
        r = self.kube.get(f"/api/v1/namespaces/{NS}/pods")
        r.raise_for_status()
        return [p for p in r.json()["items"] if p["metadata"]["name"].startswith(PREFIX)]

    def template(self) -> str:
        return f"{PREFIX}-{self.mode}"

    def ensure_template(self) -> None:
        if self.mode == "grouped":
            exactly: dict[str, Any] = {
                "deviceClassName": "dra.cpu",
                "capacity": {"requests": {"dra.cpu/cpu": "1"}},
            }
        else:
            exactly = {"deviceClassName": "dra.cpu", "count": 1}
        body = {
            "metadata": {"name": self.template()},
            "spec": {"spec": {"devices": {"requests": [{"name": "cpus", "exactly": exactly}]}}},
        }
        path = f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates"
        if self.kube.get(f"{path}/{self.template()}").status_code == 404:
            self.kube.post(path, json=body).raise_for_status()

    def create_pod(self, exclusive: bool) -> str:
        self.serial += 1
        name = f"{PREFIX}-{'excl' if exclusive else 'shared'}-{self.serial}"
        if exclusive:
            main = busybox_container(
                self.rig, "main", "sleep 3600", resources={"claims": [{"name": "cpus"}]}
            )
            body = pod_body(
                name,
                [main],
                resourceClaims=[{"name": "cpus", "resourceClaimTemplateName": self.template()}],
            )
        else:
            body = pod_body(name, [busybox_container(self.rig, "main", "sleep 3600")])
        self.wait(
            f"create {name}",
            lambda: (
                self.kube.post(f"/api/v1/namespaces/{NS}/pods", json=body).status_code in (201, 409)
            ),
            90,
        )
        log(f"pod {name} created")
        return name

    def delete_pod(self, name: str) -> None:
        self.wait(
            f"delete {name}",
            lambda: (
                self.kube.delete(f"/api/v1/namespaces/{NS}/pods/{name}").status_code
                in (200, 202, 404)
            ),
            90,
        )
        log(f"pod {name} deleted")

    def churn(self) -> None:
        """One seeded pod change: add or remove an exclusive or shared pod."""
        everything = self.pods()
        pods = [p for p in everything if not p["metadata"].get("deletionTimestamp")]
        excl = [p for p in pods if "-excl-" in p["metadata"]["name"]]
        shared = [p for p in pods if "-shared-" in p["metadata"]["name"]]
        roll = self.rng.random()
        if roll < 0.5:
            if excl:
                self.delete_pod(self.rng.choice(excl)["metadata"]["name"])
            elif not any("-excl-" in p["metadata"]["name"] for p in everything):
                self.create_pod(exclusive=True)
        elif len(shared) < 2 and roll < 0.8:
            self.create_pod(exclusive=False)
        elif shared:
            self.delete_pod(self.rng.choice(shared)["metadata"]["name"])

    def drain(self) -> None:
        for p in self.pods():
            self.delete_pod(p["metadata"]["name"])
        self.wait("every chaos pod gone", lambda: not self.pods(), 180)

    # --- faults ---------------------------------------------------------------------------
    def kill_random(self) -> None:
        self.fault("dracpu kill -9 at a random moment")
        time.sleep(self.rng.uniform(0, 3))
        self.kill_daemon()
        time.sleep(self.rng.uniform(0, 2))
        self.tick()

    def kill_inside(self, event: str) -> None:
        """Restart dracpu with a crash point on ``event`` and make the kubelet or containerd
        send that event; the death is seen (and dracpu restarted) by :meth:`tick`."""
        point = self.rng.choice(
            ("after-cdi", "before-reply")
            if event == "ContainerCreated"
            else ("after-checkpoint", "after-cdi", "before-reply")
        )
        excl = [p["metadata"]["name"] for p in self.excl_pods()]
        if event == "Unprepare" and not excl:
            name = self.create_pod(exclusive=True)
            self.wait_running(name)
            excl = [name]
        if event == "Prepare":
            for name in excl:
                self.delete_pod(name)
            self.wait("exclusive pods gone", lambda: not self.excl_pods(), 120)
        self.kill_daemon()
        self.start_daemon(crash_at=f"{point}@{event}")
        label = self.armed
        if event == "Unprepare":
            self.delete_pod(excl[0])
        elif event == "Prepare":
            self.create_pod(exclusive=True)
        else:
            self.create_pod(exclusive=False)
        deadline = time.monotonic() + 90
        while self.armed and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.2)
        if self.armed:
            self.fault(f"dracpu killed inside {label} (not reached)")
            self.kill_daemon()
            self.tick()

    def excl_pods(self) -> list[dict[str, Any]]:
        """Exclusive pods, terminating ones too (their claims may still be prepared)."""
        return [p for p in self.pods() if "-excl-" in p["metadata"]["name"]]

    def wait_running(self, name: str) -> None:
        def running() -> bool:
            r = self.kube.get(f"/api/v1/namespaces/{NS}/pods/{name}")
            return r.status_code == 200 and r.json()["status"].get("phase") == "Running"

        self.wait(f"{name} running", running, 120)

    def restart_containerd(self) -> None:
        self.fault("containerd restart (NRI socket gone and back)")
        subprocess.run([str(self.rig.containerd_restart_script)], check=True, timeout=120)

    def restart_kubelet(self) -> None:
        self.fault("kubelet restart")
        subprocess.run([str(self.rig.kubelet_script), "restart"], check=True, timeout=120)

    def apiserver_outage(self) -> None:
        seconds = self.rng.uniform(10, 60)
        self.fault("apiserver outage 10-60 s")
        log(f"apiserver down for {seconds:.0f} s")
        stop_apiserver(self.rig)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.tick()
                time.sleep(0.5)
        finally:
            start_apiserver(self.rig)

    # --- invariants -----------------------------------------------------------------------
    def observe(self, quiescent: bool) -> inv.Observed:
        containers = []
        for pod in self.pods():
            status = pod.get("status", {})
            if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                continue
            for st in status.get("containerStatuses", []):
                if "running" not in st.get("state", {}):
                    continue
                with contextlib.suppress(AssertionError, OSError):
                    proc = container_process(self.rig, pod, st["name"])
                    c = inv.proc_container(proc.pid, f"{pod['metadata']['name']}/{st['name']}")
                    if c is not None:
                        containers.append(c)
        topology = read_topology(Path("/sys"))
        r = self.kube.get(f"{RESOURCE}/resourceclaims")
        r.raise_for_status()
        status = read_status(self.state_dir)
        return inv.Observed(
            online=topology.online,
            checkpoint=inv.read_checkpoint(self.state_dir),
            cdi=inv.read_cdi(self.rig.cdi_dir),
            status=status if status.get("daemon") == "up" else None,
            containers=containers,
            node=self.rig.node_name,
            api_claims={c["metadata"]["uid"]: c for c in r.json()["items"]},
            slices=node_slices(self.kube, self.rig),
            expected_devices=inv.expected_devices(
                topology, node=self.rig.node_name, mode=self.mode, group_by="numanode"
            ),
            quiescent=quiescent,
        )

    def check(self, after: str, quiescent: bool = False) -> None:
        self.checks += 1
        deadline = time.monotonic() + self.settle
        found: list[str] = []
        while True:
            self.tick()
            try:
                found = inv.check(self.observe(quiescent))
            except httpx.HTTPError as exc:
                found = [f"api: {exc}"]
            if not found or time.monotonic() > deadline:
                break
            time.sleep(1)
        for v in found:
            log(f"VIOLATION after {after}: {v}")
        self.violations += [f"after {after}: {v}" for v in found]


# The apiservers this run started: their parent is this process, so a stopped one stays a
# zombie (its PID "alive" for kill(pid, 0)) until it is reaped here.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not): reaps an apiserver this run started."""
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_apiserver(rig: Rig) -> None:
    """SIGTERM, 30 s to exit, then SIGKILL and 10 s more."""
    pid = int(rig.pid_file("kube-apiserver").read_text())
    for sig, tries in ((signal.SIGTERM, 300), (signal.SIGKILL, 100)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(tries):
            if not _alive(pid):
                return
            time.sleep(0.1)


def start_apiserver(rig: Rig) -> None:
    """Start the rig's kube-apiserver as hack/rig/up.sh does (same argv, log, PID file), unless
    it runs; wait until /readyz answers."""
    pid_file = rig.pid_file("kube-apiserver")
    try:
        pid = int(pid_file.read_text())
    except (ValueError, OSError):
        pid = 0
    if not pid or not _alive(pid):
        argv = main_apiserver_argv(rig, enabled_feature_gates(rig))
        with rig.log_file("kube-apiserver").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pid = proc.pid
        _STARTED[pid] = proc
        pid_file.write_text(f"{pid}\n")
    deadline = time.monotonic() + 180
    while not apiserver_ready(rig):
        if not _alive(pid) or time.monotonic() > deadline:
            where = rig.log_file("kube-apiserver")
            raise RuntimeError(f"kube-apiserver did not come back (log {where})")
        time.sleep(0.5)
    log("apiserver back")


@contextlib.contextmanager
def device_class(kube: httpx.Client) -> Iterator[None]:
    path = f"{RESOURCE}/deviceclasses/dra.cpu"
    made = kube.get(path).status_code == 404
    if made:
        body = {
            "metadata": {"name": "dra.cpu"},
            "spec": {"selectors": [{"cel": {"expression": 'device.driver == "dra.cpu"'}}]},
        }
        kube.post(f"{RESOURCE}/deviceclasses", json=body).raise_for_status()
    try:
        yield
    finally:
        if made:
            with contextlib.suppress(httpx.HTTPError):
                kube.delete(path)


def run(args: argparse.Namespace) -> int:
    rig = current()
    if not rig_is_up(rig):
        print("chaos: the rig is not up (just rig-up)", file=sys.stderr)
        return 2
    started = time.monotonic()
    kube = kube_client(rig)
    rng = random.Random(args.seed)
    faults: list[Callable[[Run], None]] = [
        Run.kill_random,
        lambda r: r.kill_inside("Prepare"),
        lambda r: r.kill_inside("Unprepare"),
        lambda r: r.kill_inside("ContainerCreated"),
        Run.restart_containerd,
        Run.restart_kubelet,
        Run.apiserver_outage,
    ]
    tmp = tempfile.mkdtemp(prefix="dracpu-chaos-")
    with device_class(kube):
        r = Run(rig, kube, rng, Path(tmp), args.settle)
        try:
            for i, mode in enumerate(args.modes):
                r.mode = mode
                r.ensure_template()
                r.start_daemon()
                r.wait("published slices", lambda: node_slices(kube, rig), 60)
                end = started + args.minutes * 60 * (i + 1) / len(args.modes)
                order: list[Callable[[Run], None]] = []
                while time.monotonic() < end:
                    for _ in range(rng.randint(1, 3)):
                        try:
                            r.churn()
                        except (TimeoutError, httpx.HTTPError) as exc:
                            r.violations.append(f"{mode}: churn did not complete: {exc}")
                        time.sleep(rng.uniform(1, 5))
                    if not order:
                        order = faults[:]
                        rng.shuffle(order)
                    fault = order.pop()
                    try:
                        fault(r)
                    except (TimeoutError, subprocess.SubprocessError, httpx.HTTPError) as exc:
                        r.violations.append(f"{mode}: fault did not complete: {exc}")
                        log(f"fault failed: {exc}")
                    r.check(f"{mode} fault {sum(r.faults.values())}")
                r.drain()
                r.check(f"{mode} drain", quiescent=True)
                r.kill_daemon()
                r.daemon = None
        except Exception as exc:  # The table is still printed; the run counts as failed.
            r.violations.append(f"run aborted: {type(exc).__name__}: {exc}")
            log(f"run aborted: {exc!r}")
        finally:
            for _ in range(3):  # Never leave the rig without its apiserver.
                try:
                    start_apiserver(rig)
                    break
                except RuntimeError as exc:
                    log(f"{exc}; stopping it and trying again")
                    stop_apiserver(rig)
            with contextlib.suppress(Exception):
                r.drain()
            r.kill_daemon()
            r.daemon = None
            for mode in args.modes:
                kube.delete(f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates/{PREFIX}-{mode}")
            for s in node_slices(kube, rig):
                kube.delete(f"{RESOURCE}/resourceslices/{s['metadata']['name']}")
            for spec in rig.cdi_dir.glob("dra.k8s.io-cpu_claim-*.json"):
                log(f"removing a CDI spec left behind: {spec.name}")
                spec.unlink()
    elapsed = time.monotonic() - started
    modes = ", ".join(args.modes)
    print(f"\nchaos on the rig: seed {args.seed}, modes {modes}, {elapsed / 60:.1f} min")
    print(f"{'fault':<52} {'count':>5}")
    for name, count in sorted(r.faults.items()):
        print(f"{name:<52} {count:>5}")
    print(f"{'dracpu restarts after a death':<52} {r.restarts:>5}")
    print(f"{'invariant checks':<52} {r.checks:>5}")
    print(f"{'violations':<52} {len(r.violations):>5}")
    for v in r.violations:
        print(f"  {v}")
    if r.violations:
        print(f"dracpu logs and state kept in {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--settle", type=float, default=60.0, help="seconds for invariants to hold")
    p.add_argument(
        "--modes", nargs="+", default=["grouped", "individual"], choices=["grouped", "individual"]
    )
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
