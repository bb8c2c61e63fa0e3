"""Generated NRI messages <-> the pinning policy's plain types (pure, no I/O).

The NRI transport hands :mod:`dracpu.nri.handler` generated ``nri.pkg.api.v1alpha1`` messages;
the policy (:mod:`dracpu.core.pinning`) speaks :class:`PodInfo` / :class:`ContainerInfo`. This
module is the one place that knows both.

What NRI tells about a container, and what it does not:

- pod UID, namespace and name come from ``PodSandbox``; the container's ID, name and env
  (``NAME=value``) from ``Container``; its current cpuset from
  ``Container.linux.resources.cpu.cpus`` (Synchronize; a cpuset that does not parse counts as
  unknown);
- NRI does not say whether a container is an init container or a sidecar (the CRI carries no such
  field), so the kind comes from an optional ``kind_of`` callback (e.g. from the pod spec) and
  defaults to a regular container.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dracpu.core.cpuset import CpuSet
from dracpu.core.memory_pinning import hugetlb_size_name
from dracpu.core.pinning import ContainerInfo, ContainerKind, ContainerUpdate, PodInfo
from dracpu.errors import CpuSetParseError
from generated.nri.pkg.api import v1alpha1 as api

if TYPE_CHECKING:  # lazy.py encodes through this module
    from dracpu.nri.lazy import CreateRequestView

__all__ = [
    "KindOf",
    "adjustment",
    "container_info",
    "create_response",
    "current_cpus",
    "pod_info",
    "regular",
    "to_update",
    "to_updates",
    "view_info",
]

KindOf = Callable[[PodInfo, str], ContainerKind]
"""Resolves a container's kind from its pod and name (NRI itself does not carry it)."""


def regular(_pod: PodInfo, _name: str) -> ContainerKind:
    """The default :data:`KindOf`: every container is a regular one."""
    return ContainerKind.CONTAINER


def pod_info(pod: api.PodSandbox) -> PodInfo:
    """The policy's view of an NRI pod sandbox."""
    return PodInfo(uid=pod.uid, namespace=pod.namespace, name=pod.name)


def current_cpus(container: api.Container) -> CpuSet | None:
    """The cpuset the runtime reports for ``container``; None when absent or unparsable."""
    linux = container.linux
    if linux is None or linux.resources is None or linux.resources.cpu is None:
        return None
    text = linux.resources.cpu.cpus
    if not text:
        return None
    try:
        return CpuSet.parse(text, origin=f"NRI container {container.id} cpuset")
    except CpuSetParseError:
        return None


def container_info(
    pod: PodInfo,
    container: api.Container,
    *,
    kind_of: KindOf = regular,
    with_cpus: bool = False,
) -> ContainerInfo:
    """The policy's view of an NRI container of ``pod``.

    ``with_cpus`` reads the current cpuset (Synchronize); a container being created has none.
    """
    return ContainerInfo(
        pod=pod,
        id=container.id,
        name=container.name,
        env=tuple(container.env),
        kind=kind_of(pod, container.name),
        cpus=current_cpus(container) if with_cpus else None,
    )


def view_info(request: CreateRequestView, *, kind_of: KindOf = regular) -> ContainerInfo:
    """:func:`container_info` of :func:`pod_info` for a lazily read CreateContainerRequest."""
    pod = PodInfo(uid=request.pod_uid, namespace=request.pod_namespace, name=request.pod_name)
    return ContainerInfo(
        pod=pod,
        id=request.container_id,
        name=request.container_name,
        env=request.env,
        kind=kind_of(pod, request.container_name),
        cpus=None,
    )


HugepageLimits = tuple[tuple[int, int], ...]
"""(page size in bytes, limit in bytes) pairs, as :class:`ContainerUpdate` carries them."""


def _resources(cpus: CpuSet, mems: str, hugepages: HugepageLimits = ()) -> api.LinuxResources:
    resources = api.LinuxResources(cpu=api.LinuxCpu(cpus=str(cpus), mems=mems))
    if hugepages:
        resources.hugepage_limits = [
            api.HugepageLimit(page_size=hugetlb_size_name(size), limit=limit)
            for size, limit in hugepages
        ]
    return resources


def adjustment(
    cpus: CpuSet, *, mems: str = "", hugepage_limits: HugepageLimits = ()
) -> api.ContainerAdjustment:
    """A CreateContainer adjustment setting the container's cpuset, and its mems and hugetlb
    limits (``linux.resources.hugepage_limits``) when given."""
    return api.ContainerAdjustment(
        linux=api.LinuxContainerAdjustment(resources=_resources(cpus, mems, hugepage_limits))
    )


def to_update(update: ContainerUpdate, *, mems: str = "") -> api.ContainerUpdate:
    """An NRI update setting a running container's cpuset, and the update's mems (or ``mems``)
    and hugetlb limits when given."""
    resources = _resources(update.cpus, update.mems or mems, update.hugepage_limits)
    return api.ContainerUpdate(
        container_id=update.container_id,
        linux=api.LinuxContainerUpdate(resources=resources),
    )


def to_updates(updates: Iterable[ContainerUpdate]) -> list[api.ContainerUpdate]:
    """:func:`to_update` for each of ``updates``, in order."""
    return [to_update(u) for u in updates]


def create_response(
    cpus: CpuSet,
    updates: Iterable[ContainerUpdate],
    *,
    mems: str = "",
    hugepage_limits: HugepageLimits = (),
) -> api.CreateContainerResponse:
    """The CreateContainer answer: the new container's cpuset (and mems, hugetlb limits), and
    other containers' updates."""
    return api.CreateContainerResponse(
        adjust=adjustment(cpus, mems=mems, hugepage_limits=hugepage_limits),
        update=to_updates(updates),
    )
