"""Where the real-component rig lives, and whether it is up.

The rig (``just rig-up``; scripts in ``hack/rig/``) runs etcd, kube-apiserver, kube-scheduler,
kube-controller-manager, containerd and a real kubelet (the rig's node) as plain processes on
loopback, the node's IP and unix sockets, all under one state directory. This module is the
single place tests learn those locations from; it mirrors
``hack/rig/lib.sh`` (keep the two in step). It reads nothing but files and does no I/O at import.

Tests that need a second kube-apiserver (for example with a feature gate turned off) build its
command line with :func:`apiserver_argv`, reusing the rig's binaries, PKI and etcd under another
``--etcd-prefix``; ``hack/rig/extra-apiserver.sh`` does the same from a shell.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack" / "rig"
VERSIONS_FILE = HACK_DIR / "versions.env"


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse ``hack/rig/versions.env`` (``KEY=value`` lines, ``#`` comments) into a dict."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: line {raw!r} is not KEY=value")
        versions[key.strip()] = value.strip()
    return versions


@dataclass(frozen=True)
class Rig:
    """Fixed locations of one rig. All paths are absolute; nothing here implies the rig is up."""

    versions: Mapping[str, str]
    bin_dir: Path
    state_dir: Path
    node_name: str
    apiserver_port: int
    etcd_client_port: int

    # --- directories under the state dir -------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """PID files and unix sockets."""
        return self.state_dir / "run"

    @property
    def logs_dir(self) -> Path:
        """One ``<component>.log`` per process."""
        return self.state_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def cdi_dir(self) -> Path:
        """containerd's CDI spec directory: drop ``*.json``/``*.yaml`` CDI specs here."""
        return self.state_dir / "cdi"

    # --- Kubernetes control plane ---------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client cert in group system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def etcd_prefix(self) -> str:
        """The main apiserver's ``--etcd-prefix``; extra apiservers must use another one."""
        return "/registry"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def admin_cert(self) -> Path:
        return self.pki_dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.pki_dir / "admin.key"

    @property
    def apiserver_cert(self) -> Path:
        """Serving cert; SANs cover 127.0.0.1 and localhost, so extra apiservers may reuse it."""
        return self.pki_dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.pki_dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        """Service-account signing key (private)."""
        return self.pki_dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.pki_dir / "sa.pub"

    # --- node side -------------------------------------------------------------------------
    @property
    def cri_socket(self) -> Path:
        """containerd's gRPC socket (CRI runtime + image services)."""
        return self.run_dir / "containerd.sock"

    @property
    def nri_socket(self) -> Path:
        """containerd's NRI socket: an external NRI plugin connects here."""
        return self.run_dir / "nri.sock"

    @property
    def containerd_namespace(self) -> str:
        return "k8s.io"

    @property
    def busybox_image(self) -> str:
        """Locally built image with busybox-static; imported at rig-up."""
        return "docker.io/library/busybox:dracpu-rig"

    @property
    def pause_image(self) -> str:
        return "registry.k8s.io/pause:dracpu-rig"

    @property
    def cgroup_parent(self) -> str:
        """Cgroup (relative to each hierarchy's root) under which rig pods get their cgroups;
        rig-down removes it. Pod sandboxes use ``/<cgroup_parent>/pod<uid>`` (cgroupfs)."""
        return "dracpu-rig"

    # --- the kubelet -------------------------------------------------------------------------
    @property
    def kubelet_root(self) -> Path:
        """The kubelet's ``--root-dir`` (it bind-mounts it onto itself)."""
        return self.state_dir / "kubelet"

    @property
    def plugins_registry(self) -> Path:
        """The directory the kubelet's plugin watcher watches for ``<driver>-reg.sock``."""
        return self.kubelet_root / "plugins_registry"

    @property
    def kubelet_log(self) -> Path:
        return self.log_file("kubelet")

    @property
    def pod_logs_dir(self) -> Path:
        """The kubelet's ``podLogsDir`` (``<ns>_<pod>_<uid>/<container>/<n>.log``)."""
        return self.state_dir / "pod-logs"

    @property
    def node_ip(self) -> str:
        """The node's InternalIP, written by rig-up (the kubelet serves on it)."""
        return (self.state_dir / "node-ip").read_text().strip()

    @property
    def node_cert(self) -> Path:
        """The kubelet's client cert: ``CN=system:node:<node>``, ``O=system:nodes``."""
        return self.pki_dir / f"node-{self.node_name}.crt"

    @property
    def node_key(self) -> Path:
        return self.pki_dir / f"node-{self.node_name}.key"

    @property
    def kubelet_script(self) -> Path:
        """``hack/rig/kubelet.sh start|stop|restart`` (returns once healthz answers)."""
        return HACK_DIR / "kubelet.sh"

    @property
    def containerd_restart_script(self) -> Path:
        """``hack/rig/containerd-restart.sh`` (returns once CRI and the NRI socket are back);
        ``--nri=off`` restarts it with NRI disabled, ``--nri=on`` puts the normal config back
        (:class:`tests.e2e.enforcement.Containerd`)."""
        return HACK_DIR / "containerd-restart.sh"

    def binary(self, name: str) -> Path:
        """Path of a rig binary (``kube-apiserver``, ``etcd``, ``containerd``, ``ctr`` ...)."""
        return self.bin_dir / name

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"


def current() -> Rig:
    """The rig described by ``versions.env`` and the ``DRACPU_RIG_*`` environment overrides."""
    versions = read_versions()
    cache_root = Path(
        os.environ.get("DRACPU_RIG_CACHE", str(Path.home() / ".cache" / "dracpu" / "rig"))
    )
    tag = (
        f"k8s-{versions['KUBERNETES_VERSION']}-etcd-{versions['ETCD_VERSION']}"
        f"-containerd-{versions['CONTAINERD_VERSION']}"
    )
    return Rig(
        versions=versions,
        bin_dir=cache_root / tag / "bin",
        state_dir=Path(os.environ.get("DRACPU_RIG_STATE", "/var/lib/dracpu-rig")),
        node_name=os.environ.get("DRACPU_RIG_NODE", "dracpu-rig-node"),
        apiserver_port=int(os.environ.get("DRACPU_RIG_APISERVER_PORT", "16443")),
        etcd_client_port=int(os.environ.get("DRACPU_RIG_ETCD_PORT", "12379")),
    )


RIG_COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
    "containerd",
    "kubelet",
)


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def apiserver_ready(rig: Rig, url: str | None = None, timeout: float = 3.0) -> bool:
    """True if ``url`` (default: the rig's apiserver) answers ``/readyz`` with 200."""
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    ctx.load_cert_chain(str(rig.admin_cert), str(rig.admin_key))
    try:
        with urllib.request.urlopen(
            f"{url or rig.apiserver_url}/readyz", context=ctx, timeout=timeout
        ) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def rig_is_up(rig: Rig | None = None) -> bool:
    """True if every recorded rig process is alive, the apiserver is ready and CRI is listening."""
    rig = rig or current()
    if not all(_pid_alive(rig.pid_file(c)) for c in RIG_COMPONENTS):
        return False
    if not rig.cri_socket.is_socket() or not rig.ca_cert.exists():
        return False
    return apiserver_ready(rig)


def enabled_feature_gates(rig: Rig) -> dict[str, bool]:
    """The feature gates rig-up passed to the main apiserver (written by rig-up)."""
    path = rig.state_dir / "feature-gates"
    return _parse_gates(path.read_text()) if path.exists() else {}


def _parse_gates(text: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for item in text.strip().split(","):
        if item:
            name, _, value = item.partition("=")
            gates[name.strip()] = value.strip() == "true"
    return gates


def _apiserver_base_argv(
    rig: Rig, secure_port: int, etcd_prefix: str, gates: Mapping[str, bool]
) -> list[str]:
    gate_arg = ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates.items()))
    argv = [
        str(rig.binary("kube-apiserver")),
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
        f"--secure-port={secure_port}",
        f"--etcd-servers={rig.etcd_url}",
        f"--etcd-prefix={etcd_prefix}",
        f"--cert-dir={rig.state_dir / 'apiserver-certs'}",
        f"--tls-cert-file={rig.apiserver_cert}",
        f"--tls-private-key-file={rig.apiserver_key}",
        f"--client-ca-file={rig.ca_cert}",
        f"--service-account-key-file={rig.sa_pub}",
        f"--service-account-signing-key-file={rig.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--runtime-config=resource.k8s.io/v1=true",
        "--profiling=false",
    ]
    if gate_arg:
        argv.append(f"--feature-gates={gate_arg}")
    return argv


def main_apiserver_argv(rig: Rig, gates: Mapping[str, bool]) -> list[str]:
    """Command line of the rig's own kube-apiserver (used by hack/rig/up.sh).

    On top of the shared flags: NodeRestriction (the kubelet writes only its own Node and pods),
    and the path to the kubelet for pod logs: the node's InternalIP (the node name does not
    resolve here), the apiserver's client cert, and the rig CA for the kubelet's serving cert.
    """
    pki = rig.pki_dir
    return [
        *_apiserver_base_argv(rig, rig.apiserver_port, rig.etcd_prefix, gates),
        "--enable-admission-plugins=NodeRestriction",
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={rig.ca_cert}",
    ]


def apiserver_argv(
    rig: Rig,
    *,
    secure_port: int,
    etcd_prefix: str,
    feature_gates: Mapping[str, bool] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Command line for an extra kube-apiserver on ``127.0.0.1:secure_port`` sharing the rig's
    binaries, PKI and etcd.

    Its gates are the rig's (see :func:`enabled_feature_gates`) overridden by ``feature_gates``
    (e.g. ``{"DRAConsumableCapacity": False}``). ``etcd_prefix`` must differ from
    :attr:`Rig.etcd_prefix` so the two servers share no objects. The caller starts and stops the
    process, and waits for ``apiserver_ready(rig, url=f"https://127.0.0.1:{secure_port}")``; the
    admin client cert and CA of the rig work against it too.
    """
    if etcd_prefix.rstrip("/") == rig.etcd_prefix:
        raise ValueError(f"etcd_prefix {etcd_prefix!r} is the rig's own; pick another")
    gates = enabled_feature_gates(rig)
    gates.update(feature_gates or {})
    return [*_apiserver_base_argv(rig, secure_port, etcd_prefix, gates), *extra_args]


def _cli(argv: Sequence[str]) -> int:
    """``python -m tests.e2e.rig is-up | main-apiserver-argv GATES |
    apiserver-argv PORT PREFIX [GATES]``; argv lists print one argument per line."""
    rig = current()
    match list(argv):
        case ["is-up"]:
            return 0 if rig_is_up(rig) else 1
        case ["main-apiserver-argv", gates]:
            print("\n".join(main_apiserver_argv(rig, _parse_gates(gates))))
            return 0
        case ["apiserver-argv", port, prefix, *rest]:
            over = _parse_gates(rest[0]) if rest else {}
            print(
                "\n".join(
                    apiserver_argv(
                        rig, secure_port=int(port), etcd_prefix=prefix, feature_gates=over
                    )
                )
            )
            return 0
        case _:
            print(_cli.__doc__, file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
