"""``dracpu status``: what the node holds, from the running daemon or from its state dir.

While the daemon runs it serves one JSON document on the unix socket ``<state-dir>/status.sock``
(connect, read to EOF; a stand-in until the HTTP endpoint of a later issue): the prepared claims
and their CPUs, the shared pool, the publisher's health, the kubelet registration, the claim
status writer and the effect timings. When nothing answers there, :func:`read_status` reads the
checkpoint instead and says the daemon is down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from dracpu.checkpoint import CheckpointError, CheckpointStore, CheckpointVersionError, decode
from dracpu.core import node
from dracpu.core.memory import size_string
from dracpu.core.quantity import format_bytes
from dracpu.daemon.health import NodeHealth

if TYPE_CHECKING:
    from dracpu.daemon.run import Daemon

__all__ = ["STATUS_SOCKET", "read_status", "render_text", "serve_status", "status_document"]

STATUS_SOCKET = "status.sock"


def _claims(state: node.NodeState) -> list[dict[str, Any]]:
    return [
        {
            "uid": c.ref.uid,
            "namespace": c.ref.namespace,
            "name": c.ref.name,
            "cpus": str(c.cpus),
            "adopted": c.adopted,
            "devices": [
                {"request": d.request, "device": d.device, "cpus": str(d.cpus)} for d in c.devices
            ],
        }
        for _, c in sorted(state.claims.items())
    ]


def _memory_claims(state: node.NodeState) -> list[dict[str, Any]]:
    return [
        {
            "uid": uid,
            "adopted": a.adopted,
            "numaNodes": list(a.numa_nodes),
            "memory": {str(n): format_bytes(b) for n, b in a.memory_bytes.items()},
            "hugepages": {
                size_string(size): {str(n): pages for n, pages in nodes.items()}
                for size, nodes in a.hugepages.items()
            },
            "devices": [
                {"request": g.request, "device": g.device, "size": format_bytes(g.size)}
                for g in a.grants
            ],
        }
        for uid, a in sorted(state.memory.items())
    ]


def _memory_driver(daemon: Daemon, health: NodeHealth) -> dict[str, Any] | None:
    """The ``dra.memory`` driver's part of the status; None when ``--memory-driver`` is off."""
    memory = daemon.memory
    if memory is None or health.memory is None:
        return None
    return {
        "driver": memory.plugin_config.driver_name,
        "devices": [d.name for d in daemon.owner.state.config.memory_devices],
        "claims": _memory_claims(daemon.owner.state),
        "publisher": dataclasses.asdict(health.memory.publisher),
        "registration": dataclasses.asdict(health.memory.registration),
        "claimCache": {"hits": memory.cache.hits, "misses": memory.cache.misses},
        "recovery": {"done": memory.recovery_done, "released": list(memory.released_at_start)},
    }


def status_document(daemon: Daemon) -> dict[str, Any]:
    """The status of a running daemon (no I/O)."""
    state = daemon.owner.state
    times = daemon.owner.times
    health = daemon.node_health()
    return {
        "daemon": "up",
        "pid": os.getpid(),
        "node": daemon.node_name,
        "uptimeSeconds": round(time.monotonic() - daemon.started_at, 3),
        "start": daemon.start_kind,
        "mode": str(state.config.mode),
        "groupBy": str(state.config.group_by),
        "online": str(state.topology.online),
        "reserved": str(state.config.reserved),
        "sharedPool": str(state.shared_pool),
        "free": str(state.free),
        "claims": _claims(state),
        "ready": health.ready,
        "notReady": list(health.reasons),
        "unhealthyDevices": [d.device_name for d in health.devices if d.message],
        "publisher": dataclasses.asdict(health.publisher),
        "registration": dataclasses.asdict(health.registration),
        "memoryDriver": _memory_driver(daemon, health),
        "claimStatus": {
            "pending": daemon.status_writer.pending,
            "written": daemon.status_writer.written,
            "dropped": daemon.status_writer.failed,
        },
        "claimCache": {"hits": daemon.cache.hits, "misses": daemon.cache.misses},
        "recovery": {
            "done": daemon.recovery_done,
            "released": list(daemon.released_at_start),
        },
        "group": {"restarts": daemon.restarts, "lastFailure": daemon.last_failure},
        "endpoint": list(daemon.endpoint_addresses),
        # Who enforces right now: "nri", "cgroups" (the fallback) or "none".
        "enforcement": daemon.enforcement.active if daemon.enforcement is not None else "none",
        "hotplug": {"state": daemon.hotplug, "topologyChanges": daemon.topology_changes},
        "timeline": {k: round(v, 4) for k, v in daemon.timeline.items()},
        "effects": {
            "events": times.events,
            "checkpointWrites": times.checkpoint_writes,
            "checkpointSeconds": round(times.checkpoint, 6),
            "cdiSeconds": round(times.cdi, 6),
            "totalSeconds": round(times.total, 6),
        },
        "config": daemon.config.to_json(),
    }


async def serve_status(state_dir: Path, render: Any) -> NoReturn:
    """Serve ``render()`` as JSON to every connection on ``<state_dir>/status.sock``.

    The socket is 0600 (root only) and its dir is created 0700.

    Cancellation: the socket is closed and its file removed.
    """
    path = state_dir / STATUS_SOCKET
    _prepare_socket_path(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)  # Before listen: no one connects while it is still open to all.
        sock.listen(16)
        listener = trio.SocketListener(sock)

        async def answer(stream: trio.SocketStream) -> None:
            async with stream:
                data = json.dumps(render(), separators=(",", ":")).encode() + b"\n"
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(data)

        await trio.serve_listeners(answer, [listener])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise AssertionError("unreachable")  # pragma: no cover


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_status(state_dir: Path, *, timeout: float = 2.0) -> dict[str, Any]:
    """The daemon's status from its socket, or, when it does not answer, from the checkpoint
    (``"daemon": "down"``). Blocking; for the CLI."""
    path = state_dir / STATUS_SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        doc: dict[str, Any] = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        pass
    else:
        return doc
    store = CheckpointStore(state_dir)
    doc = {"daemon": "down", "stateDir": str(state_dir)}
    try:
        loaded = _peek(store)
    except CheckpointVersionError as exc:
        doc["checkpoint"] = str(exc)
        return doc
    doc["checkpoint"] = loaded["status"]
    if "body" in loaded:
        body = loaded["body"]
        doc.update(
            node=body.get("pool"),
            mode=body.get("mode"),
            groupBy=body.get("groupBy"),
            reserved=body.get("reserved"),
            claims=[
                {k: c.get(k) for k in ("uid", "namespace", "name", "cpus", "adopted", "devices")}
                for c in body.get("claims", [])
            ],
            memoryClaims=[
                {k: m.get(k) for k in ("claimUID", "adopted", "grants")}
                for m in body.get("memory", [])
                if isinstance(m, dict)
            ],
        )
    else:
        doc["reason"] = loaded.get("reason", "")
    return doc


def _peek(store: CheckpointStore) -> dict[str, Any]:
    """Read the checkpoint without moving a bad one aside (status must not change anything)."""
    try:
        data = store.path.read_bytes()
    except FileNotFoundError:
        return {"status": "absent"}
    except OSError as exc:
        return {"status": "unreadable", "reason": str(exc)}
    try:
        return {"status": "loaded", "body": decode(data, path=str(store.path))}
    except CheckpointVersionError:
        raise
    except CheckpointError as exc:
        return {"status": "corrupt", "reason": str(exc)}


def render_text(doc: dict[str, Any]) -> str:
    """A short human-readable summary of a status document."""
    lines = [f"daemon: {doc.get('daemon')}" + (f" (pid {doc['pid']})" if "pid" in doc else "")]
    for key in ("node", "mode", "groupBy", "online", "reserved", "sharedPool", "free"):
        if doc.get(key) is not None:
            lines.append(f"{key}: {doc[key]}")
    if "ready" in doc:
        lines.append("ready: yes" if doc["ready"] else f"ready: no ({'; '.join(doc['notReady'])})")
    if "checkpoint" in doc:
        lines.append(f"checkpoint: {doc['checkpoint']}")
    if doc.get("reason"):
        lines.append(f"reason: {doc['reason']}")
    pub = doc.get("publisher")
    if pub:
        lines.append(
            f"publisher: {pub['state']} (generation {pub['generation']}, {pub['slices']} slice(s)"
            + (f", error: {pub['last_error']}" if pub.get("last_error") else "")
            + ")"
        )
    reg = doc.get("registration")
    if reg:
        word = (
            "registered"
            if reg["registered"]
            else ("rejected" if reg["notifications"] else "waiting")
        )
        lines.append(f"registration: {word}" + (f" ({reg['error']})" if reg.get("error") else ""))
    claims = doc.get("claims") or []
    lines.append(f"claims: {len(claims)}")
    for c in claims:
        name = f"{c['namespace']}/{c['name']}" if c.get("name") else "(adopted)"
        lines.append(f"  {name} uid {c['uid']}: cpus {c['cpus']}")
    memory = doc.get("memoryDriver")
    if memory:
        pub, reg = memory["publisher"], memory["registration"]
        word = (
            "registered"
            if reg["registered"]
            else ("rejected" if reg["notifications"] else "waiting")
        )
        lines.append(
            f"memory driver {memory['driver']}: registration {word}, publisher {pub['state']} "
            f"({pub['slices']} slice(s)), devices {', '.join(memory['devices']) or 'none'}"
        )
        lines.append(f"memory claims: {len(memory['claims'])}")
        for m in memory["claims"]:
            held = ", ".join(f"{d['device']} {d['size']}" for d in m["devices"])
            lines.append(
                f"  uid {m['uid']}{' (adopted)' if m['adopted'] else ''}: NUMA "
                f"{','.join(str(n) for n in m['numaNodes'])}: {held}"
            )
    elif doc.get("memoryClaims"):
        lines.append(f"memory claims: {len(doc['memoryClaims'])}")
        for m in doc["memoryClaims"]:
            lines.append(f"  uid {m['claimUID']}: {len(m.get('grants') or [])} grant(s)")
    return "\n".join(lines) + "\n"
