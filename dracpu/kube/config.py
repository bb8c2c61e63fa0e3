"""Where the API server is and how to authenticate: in-cluster files or a kubeconfig.

:class:`KubeConfig` is a plain value (URL, TLS material, credentials, origin). Two loaders make
one: :func:`load_in_cluster` (the pod's service-account files and ``KUBERNETES_SERVICE_HOST/PORT``,
like client-go's ``InClusterConfig``) and :func:`load_kubeconfig` (current or named context;
bearer token or token file, client certificate/key as data or file, CA as data or file).
:func:`load_config` picks one the way kubectl does. Exec plugins and auth-providers are not
supported and say so.

The bearer token of a pod is a projected, rotating file; :class:`TokenSource` re-reads it when its
mtime changes, at least every ``refresh_seconds``, and at once after a 401.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dracpu.kube.errors import KubeConfigError

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "KubeConfig",
    "TokenSource",
    "load_config",
    "load_in_cluster",
    "load_kubeconfig",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubeConfig:
    """Everything needed to talk to one API server.

    ``origin`` says where the values came from (a kubeconfig path and context, or "in-cluster") so
    errors can name it. At most one of ``token`` / ``token_file`` is set; PEM material is given
    either as bytes (``*_data``) or as a file path.
    """

    server: str
    origin: str
    ca_data: bytes | None = None
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    client_cert_data: bytes | None = None
    client_cert_file: str | None = None
    client_key_data: bytes | None = None
    client_key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    namespace: str = "default"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Build the TLS context (CA, client certificate); ``True`` for plain http URLs.

        PEM data is loaded through a private temporary directory because the ``ssl`` module only
        reads client certificates from files; the files are deleted before returning.
        """
        if not self.server.startswith("https://"):
            return True
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            if self.insecure_skip_tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif self.ca_data is not None:
                ctx.load_verify_locations(cadata=self.ca_data.decode("ascii", "replace"))
            elif self.ca_file is not None:
                ctx.load_verify_locations(cafile=self.ca_file)
            if self.client_cert_data is not None or self.client_cert_file is not None:
                self._load_client_cert(ctx)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise KubeConfigError(
                f"cannot load TLS material: {exc}", value=self.server, origin=self.origin
            ) from exc
        return ctx

    def _load_client_cert(self, ctx: ssl.SSLContext) -> None:
        if self.client_key_data is None and self.client_key_file is None:
            raise KubeConfigError(
                "client certificate without client key", value=self.server, origin=self.origin
            )
        with tempfile.TemporaryDirectory(prefix="dracpu-kube-") as tmp:
            cert = self.client_cert_file
            key = self.client_key_file
            if self.client_cert_data is not None:
                cert = _write_private(Path(tmp) / "cert.pem", self.client_cert_data)
            if self.client_key_data is not None:
                key = _write_private(Path(tmp) / "key.pem", self.client_key_data)
            assert cert is not None
            ctx.load_cert_chain(certfile=cert, keyfile=key)

    def token_source(self, clock: Callable[[], float] = time.monotonic) -> TokenSource | None:
        """A token source for the bearer token of this config, or None without one."""
        if self.token_file is not None:
            return TokenSource(path=self.token_file, clock=clock)
        if self.token is not None:
            return TokenSource(static=self.token, clock=clock)
        return None


def _write_private(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return str(path)


class TokenSource:
    """A bearer token, re-read from its file when it may have rotated.

    The file is read when first needed, again when its mtime changed, after ``refresh_seconds``
    regardless (clock skew, same-second rewrites), and after :meth:`invalidate` (a 401). Reads are
    synchronous: the file is a few hundred bytes on a tmpfs.
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        static: str | None = None,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (path is None) == (static is None):
            raise ValueError("exactly one of path and static")
        self._path = path
        self._token = static
        self._refresh = refresh_seconds
        self._clock = clock
        self._read_at: float | None = None
        self._mtime: int | None = None

    @property
    def path(self) -> str | None:
        """The token file, or None for a static token."""
        return self._path

    def invalidate(self) -> None:
        """Force a re-read on the next :meth:`get` (after the server rejected the token)."""
        self._read_at = None

    def get(self) -> str:
        """The current token; raises :class:`KubeConfigError` if the file is unreadable/empty."""
        if self._path is None:
            assert self._token is not None
            return self._token
        now = self._clock()
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError as exc:
            raise KubeConfigError(
                f"cannot stat token file: {exc.strerror}", value=self._path, origin="token file"
            ) from exc
        stale = (
            self._token is None
            or self._read_at is None
            or mtime != self._mtime
            or now - self._read_at >= self._refresh
        )
        if stale:
            try:
                token = Path(self._path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise KubeConfigError(
                    f"cannot read token file: {exc}", value=self._path, origin="token file"
                ) from exc
            if not token:
                raise KubeConfigError("token file is empty", value=self._path, origin="token file")
            self._token, self._read_at, self._mtime = token, now, mtime
        assert self._token is not None
        return self._token


def load_in_cluster(
    env: Mapping[str, str] | None = None, sa_dir: Path = SERVICE_ACCOUNT_DIR
) -> KubeConfig:
    """Config of a pod: ``KUBERNETES_SERVICE_HOST/PORT`` plus the service-account token and CA.

    Raises :class:`KubeConfigError` naming the missing variable or file.
    """
    env = os.environ if env is None else env
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must "
            "both be set",
            value=f"host={host!r} port={port!r}",
            origin="environment",
        )
    if not port.isdigit():
        raise KubeConfigError("not a port number", value=port, origin="KUBERNETES_SERVICE_PORT")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    token_file = sa_dir / "token"
    ca_file = sa_dir / "ca.crt"
    for path in (token_file, ca_file):
        if not path.is_file():
            raise KubeConfigError(
                "service-account file missing", value=str(path), origin="in-cluster config"
            )
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    return KubeConfig(
        server=f"https://{host}:{port}",
        origin="in-cluster",
        ca_file=str(ca_file),
        token_file=str(token_file),
        namespace=namespace or "default",
    )


def _b64(value: object, *, what: str, origin: str) -> bytes:
    if not isinstance(value, str):
        raise KubeConfigError(f"{what} must be a base64 string", value=value, origin=origin)
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise KubeConfigError(f"{what} is not base64", value=value[:32], origin=origin) from exc


def _named(items: object, name: str, key: str, *, origin: str) -> Mapping[str, Any]:
    if not isinstance(items, list):
        raise KubeConfigError(f"'{key}s' is not a list", value=items, origin=origin)
    for item in items:
        if isinstance(item, Mapping) and item.get("name") == name:
            body = item.get(key)
            if not isinstance(body, Mapping):
                raise KubeConfigError(f"{key} {name!r} has no body", value=item, origin=origin)
            return body
    raise KubeConfigError(f"no {key} named {name!r}", value=name, origin=origin)


def load_kubeconfig(path: str | Path, context: str | None = None) -> KubeConfig:
    """Config from a kubeconfig file, using ``context`` or the file's ``current-context``.

    Relative file paths in the kubeconfig are resolved against the file's directory. Raises
    :class:`KubeConfigError` naming the file, context and field on any problem.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig: {exc}", value=str(path)) from exc
    if not isinstance(doc, Mapping):
        raise KubeConfigError("kubeconfig is not a mapping", value=str(path))
    ctx_name = context or doc.get("current-context")
    if not ctx_name or not isinstance(ctx_name, str):
        raise KubeConfigError("no context given and no current-context", value=str(path))
    origin = f"{path} context {ctx_name!r}"
    ctx = _named(doc.get("contexts"), ctx_name, "context", origin=origin)
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster")), "cluster", origin=origin)
    user: Mapping[str, Any] = {}
    if ctx.get("user"):
        user = _named(doc.get("users"), str(ctx.get("user")), "user", origin=origin)
    base = path.resolve().parent

    def _file(value: object, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise KubeConfigError(f"{what} must be a path", value=value, origin=origin)
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else base / p)

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError("cluster server must be an http(s) URL", value=server, origin=origin)
    for unsupported in ("exec", "auth-provider", "username"):
        if user.get(unsupported):
            raise KubeConfigError(
                f"user authentication via {unsupported!r} is not supported; use a token or a "
                "client certificate",
                value=unsupported,
                origin=origin,
            )
    kwargs: dict[str, Any] = {"server": server.rstrip("/"), "origin": origin}
    if cluster.get("certificate-authority-data"):
        kwargs["ca_data"] = _b64(
            cluster["certificate-authority-data"], what="certificate-authority-data", origin=origin
        )
    elif cluster.get("certificate-authority"):
        kwargs["ca_file"] = _file(cluster["certificate-authority"], "certificate-authority")
    kwargs["insecure_skip_tls_verify"] = bool(cluster.get("insecure-skip-tls-verify", False))
    if user.get("client-certificate-data"):
        kwargs["client_cert_data"] = _b64(
            user["client-certificate-data"], what="client-certificate-data", origin=origin
        )
    elif user.get("client-certificate"):
        kwargs["client_cert_file"] = _file(user["client-certificate"], "client-certificate")
    if user.get("client-key-data"):
        kwargs["client_key_data"] = _b64(
            user["client-key-data"], what="client-key-data", origin=origin
        )
    elif user.get("client-key"):
        kwargs["client_key_file"] = _file(user["client-key"], "client-key")
    if user.get("token"):
        kwargs["token"] = str(user["token"])
    elif user.get("tokenFile"):
        kwargs["token_file"] = _file(user["tokenFile"], "tokenFile")
    if isinstance(ctx.get("namespace"), str) and ctx["namespace"]:
        kwargs["namespace"] = ctx["namespace"]
    return KubeConfig(**kwargs)


def load_config(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    env: Mapping[str, str] | None = None,
    sa_dir: Path = SERVICE_ACCOUNT_DIR,
) -> KubeConfig:
    """Choose a config like kubectl: explicit kubeconfig, else in-cluster, else $KUBECONFIG/~.

    ``$KUBECONFIG`` may list several files; the first existing one is used (no merging).
    """
    env = os.environ if env is None else env
    if kubeconfig:
        return load_kubeconfig(kubeconfig, context)
    if env.get("KUBERNETES_SERVICE_HOST") and context is None:
        return load_in_cluster(env, sa_dir)
    candidates = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates.append(str(Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"))
    for candidate in candidates:
        if Path(candidate).is_file():
            return load_kubeconfig(candidate, context)
    raise KubeConfigError(
        "no kubeconfig found and not running in a cluster",
        value=candidates,
        origin="KUBECONFIG/HOME",
    )
