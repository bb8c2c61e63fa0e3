"""A DRA driver process on the rig's node, as the kubelet sees it: a command line.

:class:`DraDriver` starts, stops (SIGTERM) and kills (SIGKILL, like a crash) one driver process
and reads its call log. :func:`plugin_argv` is the command of the test plugin in
:mod:`tests.e2e.dra_plugin`; once ``dracpu run`` exists, the ``dra_driver_command`` fixture in
``conftest.py`` can return the daemon's command line instead (the call-log assertions are the
test plugin's; tests of the daemon check the API and the container instead).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.kube import wait_for
from tests.e2e.rig import REPO_ROOT, Rig

# A command line for one DRA driver process: (rig, call log, driver=..., options) -> argv.
DriverCommand = Callable[..., list[str]]


def plugin_argv(
    rig: Rig, calls: Path, *, driver: str = "dra.cpu", devices: int = 2, fail_prepare: int = 0
) -> list[str]:
    """Command line of :mod:`tests.e2e.dra_plugin` for the rig's node."""
    return [
        sys.executable,
        "-m",
        "tests.e2e.dra_plugin",
        f"--driver={driver}",
        f"--node={rig.node_name}",
        f"--kubelet-root={rig.kubelet_root}",
        f"--cdi-dir={rig.cdi_dir}",
        f"--kubeconfig={rig.kubeconfig}",
        f"--calls={calls}",
        f"--devices={devices}",
        f"--fail-prepare={fail_prepare}",
    ]


class DraDriver:
    """One driver process; ``calls`` is its JSON-lines call log, ``log`` its stdout/stderr."""

    def __init__(self, rig: Rig, argv: Sequence[str], calls: Path, log: Path, driver: str) -> None:
        self.rig, self.argv, self.calls_file, self.log, self.driver = (
            rig,
            list(argv),
            calls,
            log,
            driver,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.registrations_per_start = 1
        """Kubelet registrations one start makes (2 for ``dracpu run --memory-driver``)."""

    @property
    def registration_socket(self) -> Path:
        return self.rig.plugins_registry / f"{self.driver}-reg.sock"

    def calls(self, op: str | None = None) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        lines = self.calls_file.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if op is None or e["op"] == op]

    def start(self, timeout: float = 30.0) -> DraDriver:
        """Start and wait until the kubelet confirmed one more registration than before."""
        seen = len(self.calls("registered"))
        # Inside the rig's runtime cgroup, so rig-down kills a driver an aborted test run left.
        cgroup = (
            Path(self.rig.run_dir.joinpath("runtime-cgroup").read_text().strip()) / "e2e-drivers"
        )
        cgroup.mkdir(exist_ok=True)
        join = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", join, "sh", str(cgroup), *self.argv],
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            f"kubelet to register {self.driver} (log {self.log})",
            lambda: (
                self._exited() or len(self.registrations()) >= seen + self.registrations_per_start
            ),
            timeout,
        )
        assert self.registrations()[-1]["registered"], self.registrations()[-1]
        return self

    def registrations(self) -> list[dict[str, Any]]:
        return self.calls("registered")

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:]
            raise AssertionError(f"driver exited with {self.proc.returncode}: {tail}")
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the process and wait for it (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def prepared(self, uid: str) -> int:
        return sum(1 for c in self.calls("prepare") if c["uid"] == uid)

    def unprepared(self, uid: str) -> int:
        return sum(1 for c in self.calls("unprepare") if c["uid"] == uid)


def daemon_argv(
    rig: Rig,
    state_dir: Path,
    *,
    driver: str = "dra.cpu",
    enforcement: str = "nri",
    **flags: str,
) -> list[str]:
    """Command line of ``dracpu run`` as the rig node's DRA driver: the rig's kubeconfig, kubelet
    root, CDI dir, NRI socket and kubelet ``cgroupRoot``; ``flags`` are more ``--flag=value``
    options (underscores become dashes: ``cpu_device_mode="individual"``)."""
    assert driver == "dra.cpu", driver
    argv = [
        sys.executable,
        "-m",
        "dracpu",
        "run",
        f"--kubeconfig={rig.kubeconfig}",
        f"--hostname-override={rig.node_name}",
        f"--kubelet-root-dir={rig.kubelet_root}",
        f"--cdi-dir={rig.cdi_dir}",
        f"--state-dir={state_dir}",
        f"--nri-socket={rig.nri_socket}",
        f"--enforcement={enforcement}",
        f"--kubelet-cgroup-root=/{rig.cgroup_parent}",
        "--bind-address=127.0.0.1:0",  # the endpoint on a free port: no clash with a DaemonSet
    ]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    return argv


REGISTERED = "registered with the kubelet"
REJECTED = "kubelet rejected the plugin registration"


class DracpuDaemon(DraDriver):
    """``dracpu run`` as the driver: registrations are read from its log (it keeps no call log);
    ``state_dir`` holds its checkpoint and status socket, and survives a restart."""

    def __init__(self, rig: Rig, argv: Sequence[str], log: Path, state_dir: Path) -> None:
        super().__init__(rig, argv, log.with_suffix(".none"), log, "dra.cpu")
        self.state_dir = state_dir
        if "--memory-driver=true" in argv:  # dra.memory registers too (the same log line)
            self.registrations_per_start = 2

    def registrations(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if REGISTERED in line:
                out.append({"op": "registered", "registered": True, "error": ""})
            elif REJECTED in line:
                out.append({"op": "registered", "registered": False, "error": line})
        return out

    def status(self) -> dict[str, Any]:
        """``dracpu status --json`` of this daemon (its state dir)."""
        r = subprocess.run(
            [sys.executable, "-m", "dracpu", "status", f"--state-dir={self.state_dir}", "--json"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=False,
        )
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc


DaemonFactory = Callable[..., DracpuDaemon]
"""The ``dracpu_daemon_factory`` fixture: starts ``dracpu run`` with flags as keywords."""


# Starts one driver process with options (``devices=``, ``fail_prepare=``) and waits for the
# kubelet to register it (the ``dra_driver_factory`` fixture).
DriverFactory = Callable[..., DraDriver]
