"""Helpers for the real-apiserver tests of the kube adapter (tests/e2e/test_kube_*.py).

* :func:`rig_config` — a :class:`KubeConfig` from the rig's admin kubeconfig;
* :func:`create_node` — a throw-away Node object, so each test owns its node's slices and does
  not disturb others' tests on the rig node;
* :class:`CuttableTransport` — wraps httpx's real transport so a test can cut every open watch
  connection mid-stream (the next chunk raises ``httpx.ReadError`` as a reset connection does);
* :func:`extra_apiserver` — a second kube-apiserver on the rig's etcd (own prefix) with feature
  gates overridden, started and stopped by the test.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from dracpu.kube.client import KubeClient
from dracpu.kube.config import KubeConfig, load_kubeconfig
from dracpu.kube.resources import NODES
from tests.e2e.rig import Rig, apiserver_argv, apiserver_ready


def rig_config(rig: Rig, server: str | None = None) -> KubeConfig:
    """The rig's admin credentials, optionally pointed at another apiserver URL."""
    cfg = load_kubeconfig(rig.kubeconfig)
    if server is None:
        return cfg
    return KubeConfig(
        server=server,
        origin=f"{cfg.origin} (server {server})",
        ca_data=cfg.ca_data,
        ca_file=cfg.ca_file,
        client_cert_data=cfg.client_cert_data,
        client_cert_file=cfg.client_cert_file,
        client_key_data=cfg.client_key_data,
        client_key_file=cfg.client_key_file,
        token=cfg.token,
        token_file=cfg.token_file,
    )


def raw_client(rig: Rig, server: str | None = None) -> httpx.AsyncClient:
    """A plain httpx client with the rig's admin certificate: an independent view of the API."""
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    ctx.load_cert_chain(str(rig.admin_cert), str(rig.admin_key))
    return httpx.AsyncClient(base_url=server or rig.apiserver_url, verify=ctx, timeout=30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_node_name(prefix: str = "kube-e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_node(client: KubeClient, name: str) -> dict[str, Any]:
    """Create a bare Node object (no kubelet behind it) and return it."""
    return await client.create(
        NODES,
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"e2e": "kube"}}},
    )


class _CutStream(httpx.AsyncByteStream):
    """A response body that raises ReadError on the next chunk once cut.

    Iterated by hand (no generator of its own) and drained by cancellation when cut, so httpx's
    own chain of async generators always finishes instead of being garbage-collected mid-way.
    """

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner
        self.cut = False
        self._it: Any = None

    def __aiter__(self) -> _CutStream:
        self._it = self.inner.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        chunk: bytes = await self._it.__anext__()
        if self.cut:
            with trio.CancelScope() as scope:
                scope.cancel()
                with contextlib.suppress(StopAsyncIteration, httpx.HTTPError):
                    while True:
                        await self._it.__anext__()
            raise httpx.ReadError("connection cut by test")
        return chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class CuttableTransport(httpx.AsyncBaseTransport):
    """httpx's real transport plus :meth:`cut_watches` for the tests."""

    def __init__(self, config: KubeConfig) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=config.ssl_context())
        self.watches: list[_CutStream] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.params.get("watch") != "true":
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        stream = _CutStream(response.stream)
        self.watches.append(stream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=stream,
            extensions=response.extensions,
        )

    def cut_watches(self) -> int:
        """Cut every watch opened so far; returns how many were open."""
        for stream in self.watches:
            stream.cut = True
        n = len(self.watches)
        self.watches.clear()
        return n

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def extra_apiserver(
    rig: Rig,
    *,
    port: int,
    gates: dict[str, bool],
    log_path: Path,
    extra_args: Sequence[str] = (),
    etcd_prefix: str | None = None,
    crash: bool = False,
) -> AsyncIterator[str]:
    """Run a second kube-apiserver with ``gates`` overridden; yields its URL.

    ``etcd_prefix`` (default: a fresh one) lets a later server see the same objects. ``crash``
    ends it with SIGKILL (connections reset at once) instead of a graceful SIGTERM.
    """
    prefix = etcd_prefix or f"/dracpu-kube-e2e-{uuid.uuid4().hex[:8]}"
    argv = apiserver_argv(
        rig, secure_port=port, etcd_prefix=prefix, feature_gates=gates, extra_args=extra_args
    )
    url = f"https://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        proc = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            with trio.fail_after(120):
                while not await trio.to_thread.run_sync(apiserver_ready, rig, url, 2.0):
                    if proc.returncode is not None:
                        tail = (await trio.Path(log_path).read_text(errors="replace"))[-2000:]
                        raise RuntimeError(f"extra apiserver exited {proc.returncode}: {tail}")
                    await trio.sleep(0.5)
            yield url
        finally:
            with trio.CancelScope(shield=True):
                if crash:
                    proc.kill()
                proc.terminate()
                with trio.move_on_after(30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
