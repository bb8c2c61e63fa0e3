"""Kernel uevents for CPU hotplug, from a raw ``NETLINK_KOBJECT_UEVENT`` socket.

The kernel broadcasts one datagram per device event on multicast group 1: a header
``ACTION@DEVPATH`` and then ``KEY=VALUE`` fields, NUL-separated. A CPU going online or offline,
or being added or removed, arrives as ``SUBSYSTEM=cpu`` with ``DEVPATH=/devices/system/cpu/cpuN``
and ``ACTION`` one of ``online``, ``offline``, ``add``, ``remove`` (``change`` when someone writes
to the CPU's ``uevent`` file, which is how the tests make the kernel speak).

Why a raw socket rather than pyroute2: the socket is one ``bind`` and one ``recv`` on a trio
socket (so it is cancellable and needs no thread), and the parse is a split on NUL; pyroute2's
uevent socket is blocking or asyncio-based and would need a thread bridge here.

:func:`deliver_batches` turns a burst (a whole socket offlined at once gives one event per
CPU) into one batch, delivered once the burst has been quiet for ``quiet`` seconds, or after
``max_wait`` seconds at most, so a never-ending trickle still gets through.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = [
    "CPU_ACTIONS",
    "Uevent",
    "UeventSource",
    "cpu_events",
    "deliver_batches",
    "open_uevent_socket",
    "parse_uevent",
]

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
"""Multicast group of the kernel's own messages (udev re-broadcasts on group 2)."""
MAX_DATAGRAM = 64 * 1024
CPU_ACTIONS = frozenset({"online", "offline", "add", "remove", "change"})


@dataclass(frozen=True, slots=True)
class Uevent:
    """One parsed kernel uevent."""

    action: str
    devpath: str
    fields: Mapping[str, str]

    @property
    def subsystem(self) -> str:
        """The ``SUBSYSTEM`` field (``cpu`` for CPUs), or empty."""
        return self.fields.get("SUBSYSTEM", "")

    @property
    def cpu(self) -> int | None:
        """The CPU number for ``/devices/system/cpu/cpuN``, else None."""
        name = self.devpath.rsplit("/", 1)[-1]
        if self.subsystem == "cpu" and name.startswith("cpu") and name[3:].isdigit():
            return int(name[3:])
        return None


def parse_uevent(datagram: bytes) -> Uevent | None:
    """Parse one kernel datagram; None for anything that is not a kernel uevent.

    udev's own messages (``libudev`` magic header) and malformed datagrams are ignored rather
    than raised: the socket is shared with the whole machine and must not stop the listener.
    """
    if datagram.startswith(b"libudev"):
        return None
    parts = datagram.split(b"\0")
    header = parts[0].decode("utf-8", "replace")
    action, sep, devpath = header.partition("@")
    if not sep or not action or not devpath.startswith("/"):
        return None
    fields: dict[str, str] = {}
    for raw in parts[1:]:
        key, eq, value = raw.decode("utf-8", "replace").partition("=")
        if eq and key:
            fields[key] = value.rstrip("\n")
    return Uevent(fields.get("ACTION", action), fields.get("DEVPATH", devpath), fields)


class UeventSource(Protocol):
    """Where datagrams come from: the kernel socket, or an in-memory channel in tests."""

    def recv(self, bufsize: int, /) -> Awaitable[bytes]:
        """The next datagram (awaitable; a trio socket's ``recv`` fits)."""
        ...


async def open_uevent_socket() -> trio.socket.SocketType:
    """A trio socket bound to the kernel's uevent multicast group.

    Cancellation (only possible during the bind) closes the socket.

    Raises ``OSError`` where netlink is unavailable (some sandboxes); the daemon then runs
    without hotplug and says so in one log line.
    """
    sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        await sock.bind((0, KERNEL_GROUP))
    except BaseException:
        sock.close()
        raise
    return sock


async def cpu_events(source: UeventSource) -> AsyncGenerator[Uevent, None]:
    """Yield the CPU uevents (online/offline/add/remove/change) read from ``source``, forever.

    Cancellation stops the iteration between datagrams; no event is half-read. Iterate it
    inside ``contextlib.aclosing`` so that leaving the loop closes the generator at once.
    """
    while True:
        datagram = await source.recv(MAX_DATAGRAM)
        event = parse_uevent(datagram)
        if event is not None and event.cpu is not None and event.action in CPU_ACTIONS:
            yield event


async def deliver_batches(
    events: AsyncGenerator[Uevent, None],
    on_batch: Callable[[tuple[Uevent, ...]], Awaitable[None]],
    *,
    quiet: float = 0.2,
    max_wait: float = 1.0,
) -> None:
    """Await ``on_batch`` for each burst of ``events``, until ``events`` ends.

    A batch ends after ``quiet`` seconds without events, or ``max_wait`` seconds after its first
    event, whichever comes first; events arriving while ``on_batch`` runs form the next batch.

    Cancellation drops the batch being gathered (the daemon re-reads sysfs at its next start
    anyway, so nothing is lost).
    """
    send, receive = trio.open_memory_channel[Uevent](1024)

    async def pump() -> None:
        async with send, aclosing(events):
            async for event in events:
                await send.send(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        async with receive:
            while True:
                try:
                    batch = [await receive.receive()]
                except trio.EndOfChannel:
                    return
                deadline = trio.current_time() + max_wait
                ended = False
                while not ended:
                    wait = min(quiet, deadline - trio.current_time())
                    if wait <= 0:
                        break
                    with trio.move_on_after(wait) as scope:
                        try:
                            batch.append(await receive.receive())
                        except trio.EndOfChannel:
                            ended = True
                    if scope.cancelled_caught:
                        break
                await on_batch(tuple(batch))
                if ended:
                    return
