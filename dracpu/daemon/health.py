"""One health model for the node: what the health stream, ``dracpu status`` and (later) the
HTTP ``/healthz`` endpoint all report.

:func:`node_health` combines the device health derived from the node state (a device is healthy
while all its CPUs are online), the slice publisher's health and the kubelet's registration
verdict into one :class:`NodeHealth`, with the ``dra.memory`` driver's own registration and
publisher when ``--memory-driver`` is on. ``ready`` is true once the kubelet confirmed every
registration and every driver's slices are in sync; ``reasons`` says what is missing, in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from dracpu.core import node
from dracpu.kube.publisher import PublisherHealth
from dracpu.kubelet import DeviceHealth, Health, RegistrationState

__all__ = ["DriverParts", "NodeHealth", "device_health", "driver_reasons", "node_health"]


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """The node's health: readiness with its reasons, and the parts it was made from."""

    ready: bool
    reasons: tuple[str, ...]
    devices: tuple[DeviceHealth, ...]
    publisher: PublisherHealth
    registration: RegistrationState
    memory: DriverParts | None = None


def device_health(state: node.NodeState) -> tuple[DeviceHealth, ...]:
    """The health of every published device and of every device a prepared claim holds.

    The slice model only publishes online CPUs, so a published device is healthy unless a
    prepared claim allocated from it holds a CPU that went offline or was removed: that device
    is unhealthy, with a message naming the claim and the CPUs (the claim is never moved; the
    kubelet shows the message in the pod's status). A device such a claim holds that is no
    longer published at all (individual mode: the CPU's own device) is reported unhealthy too.
    Grouped devices report their reduced capacity through the slices, not through health.
    """
    online = state.topology.online
    bad: dict[str, list[str]] = {}
    for name, cpus in sorted(state.devices.items()):
        if not cpus <= online:
            bad.setdefault(name, []).append(f"CPUs {cpus - online} are offline")
    for _, claim in sorted(state.claims.items()):
        for d in claim.devices:
            lost = d.cpus - online
            if lost and d.pool == state.config.pool:
                bad.setdefault(d.device, []).append(
                    f"claim {claim.ref} holds CPUs {lost} that are offline or removed"
                )
    names = sorted({*state.devices, *bad})
    return tuple(
        DeviceHealth(
            pool_name=state.config.pool,
            device_name=name,
            health=Health.UNHEALTHY if name in bad else Health.HEALTHY,
            message="; ".join(bad.get(name, ()))[:1024],
        )
        for name in names
    )


@dataclass(frozen=True, slots=True)
class DriverParts:
    """A second driver's own kubelet registration and slice publisher (``dra.memory``)."""

    driver: str
    publisher: PublisherHealth
    registration: RegistrationState


def driver_reasons(
    publisher: PublisherHealth, registration: RegistrationState, *, label: str = ""
) -> list[str]:
    """Why one driver is not ready (its registration, its slices), each reason led by
    ``label`` (``"dra.memory: "``) when given; empty when it is ready."""
    reasons = []
    if not registration.registered:
        reasons.append(
            f"kubelet rejected the registration: {registration.error}"
            if registration.notifications
            else "not registered with the kubelet yet"
        )
    if publisher.state != "in-sync":
        reasons.append(
            f"ResourceSlices {publisher.state}"
            + (f": {publisher.last_error}" if publisher.last_error else "")
        )
    if publisher.missing_feature_gates:
        reasons.append(
            f"API server lacks feature gates {', '.join(publisher.missing_feature_gates)}"
        )
    return [f"{label}{r}" for r in reasons]


def node_health(
    state: node.NodeState,
    publisher: PublisherHealth,
    registration: RegistrationState,
    memory: DriverParts | None = None,
) -> NodeHealth:
    """Combine the parts (see the module docstring); ``memory``: the ``dra.memory`` driver's
    parts when it runs, whose reasons are led by its name."""
    devices = device_health(state)
    reasons = driver_reasons(publisher, registration)
    if memory is not None:
        reasons += driver_reasons(memory.publisher, memory.registration, label=f"{memory.driver}: ")
    unhealthy = [d.device_name for d in devices if d.health is not Health.HEALTHY]
    if unhealthy:
        reasons.append(f"unhealthy devices: {', '.join(unhealthy)}")
    return NodeHealth(
        ready=not reasons,
        reasons=tuple(reasons),
        devices=devices,
        publisher=publisher,
        registration=registration,
        memory=memory,
    )
