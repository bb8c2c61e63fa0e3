"""CPU uevents: parsing, batching of bursts, and the real kernel's netlink broadcast."""

from __future__ import annotations

import os
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from dracpu.uevents import Uevent, cpu_events, deliver_batches, open_uevent_socket, parse_uevent

CPU0_UEVENT = Path("/sys/devices/system/cpu/cpu0/uevent")


def datagram(action: str, devpath: str, subsystem: str = "cpu") -> bytes:
    fields = [f"{action}@{devpath}", f"ACTION={action}", f"DEVPATH={devpath}"]
    fields.append(f"SUBSYSTEM={subsystem}")
    return "\0".join(fields).encode() + b"\0"


def test_parse_cpu_offline() -> None:
    event = parse_uevent(datagram("offline", "/devices/system/cpu/cpu12"))
    assert event is not None
    assert (event.action, event.cpu, event.subsystem) == ("offline", 12, "cpu")


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", b"libudev\0\xfe\xed", b"add@relative\0", b"\xff\xfe@/x\0", b"@/devices\0"],
    ids=["empty", "no-at", "udev", "relative", "binary-action", "no-action"],
)
def test_parse_ignores_non_kernel_datagrams(raw: bytes) -> None:
    event = parse_uevent(raw)
    assert event is None or event.cpu is None


def test_cpu_number_only_for_cpu_devices() -> None:
    assert parse_uevent(datagram("add", "/devices/system/cpu/cpufreq", "cpu")).cpu is None  # type: ignore[union-attr]
    assert parse_uevent(datagram("add", "/devices/system/node/node1", "node")).cpu is None  # type: ignore[union-attr]


class ChannelSource:
    """An in-memory datagram source (the kernel socket's shape)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        self._receive = receive

    async def recv(self, bufsize: int, /) -> bytes:
        return await self._receive.receive()


async def test_bursts_become_batches(autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.open_memory_channel[bytes](100)
    batches: list[tuple[int | None, ...]] = []

    async def record(batch: tuple[Uevent, ...]) -> None:
        batches.append(tuple(e.cpu for e in batch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: deliver_batches(cpu_events(ChannelSource(receive)), record, quiet=0.2)
        )
        for cpu in range(4):  # a burst: one socket going offline
            await send.send(datagram("offline", f"/devices/system/cpu/cpu{cpu}"))
            await trio.sleep(0.05)
        await send.send(datagram("add", "/devices/system/node/node0", "node"))  # not a CPU
        await trio.sleep(1)
        await send.send(datagram("online", "/devices/system/cpu/cpu2"))
        await trio.sleep(1)
        assert batches == [(0, 1, 2, 3), (2,)]
        for _ in range(30):  # a trickle that never goes quiet still gets through by max_wait
            await send.send(datagram("change", "/devices/system/cpu/cpu1"))
            await trio.sleep(0.1)
        assert len(batches) >= 4
        assert all(len(b) <= 11 for b in batches[2:])
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make the kernel emit a uevent")
async def test_real_kernel_uevent_for_cpu0() -> None:
    sock = await open_uevent_socket()
    with sock, trio.fail_after(5):
        await trio.Path(CPU0_UEVENT).write_text("change")
        async with aclosing(cpu_events(sock)) as events:
            async for event in events:
                if event.cpu == 0 and event.action == "change":
                    assert event.fields["SUBSYSTEM"] == "cpu"
                    break
