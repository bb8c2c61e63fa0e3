"""The NRI glue without a runtime: translation, and the updater's queueing and failure paths
(an in-memory plugin stands in for NriPlugin through the constructor)."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from dracpu.core import node
from dracpu.core.cpuset import CpuSet
from dracpu.core.pinning import ContainerKind, ContainerUpdate, PodInfo
from dracpu.nri import translate
from dracpu.nri.errors import ConnectionClosedError
from dracpu.nri.policy import ContainerUpdater
from generated.nri.pkg.api import v1alpha1 as api


class MemoryPlugin:
    """Records UpdateContainers calls; ``fail`` makes the next call raise."""

    def __init__(self, *, connected: bool = True) -> None:
        self.connected = connected
        self.calls: list[list[api.ContainerUpdate]] = []
        self.fail = False

    async def update_containers(
        self,
        updates: Sequence[api.ContainerUpdate],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 (NriPlugin's signature)
    ) -> list[api.ContainerUpdate]:
        if self.fail:
            self.fail = False
            raise ConnectionClosedError("test")
        self.calls.append(list(updates))
        return []


def upd(cid: str, cpus: str) -> ContainerUpdate:
    return ContainerUpdate(cid, CpuSet.parse(cpus))


def sent(call: list[api.ContainerUpdate]) -> dict[str, str]:
    out = {}
    for u in call:
        assert u.linux is not None
        assert u.linux.resources is not None
        assert u.linux.resources.cpu is not None
        out[u.container_id] = u.linux.resources.cpu.cpus
    return out


def test_container_info_reads_pod_env_and_cpus() -> None:
    pod = api.PodSandbox(id="sb", uid="u1", namespace="ns", name="p")
    ctr = api.Container(
        id="c1",
        name="app",
        env=["A=1", "DRA_CPUSET_x=2-3"],
        linux=api.LinuxContainer(resources=api.LinuxResources(cpu=api.LinuxCpu(cpus="0-3"))),
    )
    info = translate.container_info(
        translate.pod_info(pod),
        ctr,
        kind_of=lambda p, name: ContainerKind.SIDECAR if name == "app" else ContainerKind.INIT,
        with_cpus=True,
    )
    assert info.pod == PodInfo("u1", "ns", "p")
    assert (info.id, info.name, info.env) == ("c1", "app", ("A=1", "DRA_CPUSET_x=2-3"))
    assert info.kind is ContainerKind.SIDECAR
    assert info.cpus == CpuSet.parse("0-3")
    assert translate.container_info(translate.pod_info(pod), ctr).cpus is None


def test_unparsable_or_absent_cpuset_is_unknown() -> None:
    bad = api.Container(
        id="c", linux=api.LinuxContainer(resources=api.LinuxResources(cpu=api.LinuxCpu(cpus="x")))
    )
    assert translate.current_cpus(bad) is None
    assert translate.current_cpus(api.Container(id="c")) is None


def test_create_response_round_trips() -> None:
    rsp = translate.create_response(CpuSet.parse("2-3"), (upd("s1", "0-1,4-7"),))
    parsed = api.CreateContainerResponse.parse(bytes(rsp))
    assert parsed.adjust is not None
    assert parsed.adjust.linux is not None
    assert parsed.adjust.linux.resources is not None
    assert parsed.adjust.linux.resources.cpu is not None
    assert parsed.adjust.linux.resources.cpu.cpus == "2-3"
    assert sent(list(parsed.update)) == {"s1": "0-1,4-7"}


async def test_updater_merges_sends_and_survives_failures() -> None:
    plugin = MemoryPlugin()
    updater = ContainerUpdater(plugin)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(updater.run)
        updater.submit(node.UpdateContainers((upd("a", "0-3"), upd("b", "0-3"))))
        updater.submit(node.UpdateContainers((upd("a", "0-7"),)))  # latest wins
        await trio.testing.wait_all_tasks_blocked()
        assert [sent(c) for c in plugin.calls] == [{"a": "0-7", "b": "0-3"}]
        plugin.fail = True
        updater.submit(node.UpdateContainers((upd("c", "1"),)))
        await trio.testing.wait_all_tasks_blocked()
        assert len(plugin.calls) == 1  # the failure was logged, the task goes on
        updater.submit(node.UpdateContainers((upd("d", "2"),)))
        await trio.testing.wait_all_tasks_blocked()
        assert sent(plugin.calls[-1]) == {"d": "2"}
        assert updater.sent == 3
        nursery.cancel_scope.cancel()


async def test_updater_drops_updates_while_not_connected() -> None:
    plugin = MemoryPlugin(connected=False)
    updater = ContainerUpdater(plugin)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(updater.run)
        updater.submit(node.UpdateContainers((upd("a", "0-3"),)))
        await trio.testing.wait_all_tasks_blocked()
        plugin.connected = True
        updater.submit(node.UpdateContainers((upd("b", "1"),)))
        await trio.testing.wait_all_tasks_blocked()
        # "a" was left to the next Synchronize, which re-asserts every container.
        assert [sent(c) for c in plugin.calls] == [{"b": "1"}]
        nursery.cancel_scope.cancel()
