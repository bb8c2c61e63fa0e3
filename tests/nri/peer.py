"""Drive the Go NRI runtime peer (tests/peers/nri) from trio tests.

The peer embeds the real ``github.com/containerd/nri`` ``pkg/adaptation`` at a pinned version and
speaks a JSON-lines command protocol on stdin/stdout (see tests/peers/nri/main.go).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "peers" / "nri" / "build.sh"
# One release line per runtime family: containerd 2.0/2.1; containerd 2.2 + CRI-O 1.35/1.36;
# containerd 2.3 (dedicated event RPCs).
NRI_VERSIONS = ("v0.8.0", "v0.11.0", "v0.12.0")


def build_peer(version: str) -> Path:
    """Build (or reuse from the cache) the peer binary for one NRI version; return its path."""
    result = subprocess.run(
        [str(BUILD_SCRIPT), version], check=True, capture_output=True, text=True, timeout=900
    )
    return Path(result.stdout.strip().splitlines()[-1])


class PeerError(Exception):
    """The peer answered a command with ok=false."""


@dataclass
class NriPeer:
    """A running peer process; use :func:`open_peer`."""

    process: trio.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    _replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _changed: trio.Event = field(default_factory=trio.Event)
    _seq: int = 0
    exited: bool = False

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buf = bytearray()
        while True:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                break
            buf += data
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                msg = json.loads(line)
                if "reply" in msg:
                    self._replies[msg["reply"]] = msg
                else:
                    self.events.append(msg)
                self._notify()
        self.exited = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def command(self, op: str, **args: Any) -> Any:
        """Send one command and return its result; raises :class:`PeerError` on failure."""
        self._seq += 1
        seq = self._seq
        assert self.process.stdin is not None
        line = json.dumps({"seq": seq, "op": op, **args}).encode() + b"\n"
        await self.process.stdin.send_all(line)
        while seq not in self._replies:
            if self.exited:
                raise PeerError(f"peer exited before answering {op}")
            await self._changed.wait()
        reply = self._replies.pop(seq)
        if not reply["ok"]:
            raise PeerError(reply["error"])
        return reply["result"]

    async def wait_event(self, match: Callable[[dict[str, Any]], bool], *, start: int = 0) -> int:
        """Wait for an event matching ``match`` at index >= ``start``; return its index."""
        while True:
            for i in range(start, len(self.events)):
                if match(self.events[i]):
                    return i
            if self.exited:
                raise PeerError("peer exited while waiting for an event")
            await self._changed.wait()

    async def wait_log(self, text: str, *, start: int = 0) -> int:
        """Wait for an NRI library log line containing ``text``."""
        return await self.wait_event(
            lambda e: e.get("ev") == "log" and text in e.get("msg", ""), start=start
        )

    def logs(self) -> list[str]:
        """Every NRI library log line so far."""
        return [e["msg"] for e in self.events if e.get("ev") == "log"]

    def kill(self) -> None:
        """Kill the process: a runtime crash/restart as the plugin sees it."""
        self.process.kill()


async def open_peer(nursery: trio.Nursery, binary: Path) -> NriPeer:
    """Start a peer process whose lifetime is bound to ``nursery`` (killed when it exits)."""
    process = await trio.lowlevel.open_process(
        [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ}
    )
    peer = NriPeer(process)

    async def reap() -> None:
        try:
            await peer._read()
            await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()

    nursery.start_soon(reap)
    return peer
