"""One health model for the node: what the health stream, ``dracpu status`` and (later) the
HTTP ``/healthz`` endpoint all report.

:func:`node_health` combines the device health derived from the node state (a device is healthy
while all its CPUs are online), the slice publisher's health and the kubelet's registration
verdict into one :class:`NodeHealth`. ``ready`` is true once the kubelet confirmed the
registration and the slices are in sync; ``reasons`` says what is missing, in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from dracpu.core import node
from dracpu.kube.publisher import PublisherHealth
from dracpu.kubelet import DeviceHealth, Health, RegistrationState

__all__ = ["NodeHealth", "device_health", "node_health"]


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """The node's health: readiness with its reasons, and the parts it was made from."""

    ready: bool
    reasons: tuple[str, ...]
    devices: tuple[DeviceHealth, ...]
    publisher: PublisherHealth
    registration: RegistrationState


def device_health(state: node.NodeState) -> tuple[DeviceHealth, ...]:
    """The health of every published device: healthy while all its CPUs are online."""
    online = state.topology.online
    return tuple(
        DeviceHealth(
            pool_name=state.config.pool,
            device_name=name,
            health=Health.HEALTHY if cpus <= online else Health.UNHEALTHY,
            message="" if cpus <= online else f"CPUs {cpus - online} are offline",
        )
        for name, cpus in sorted(state.devices.items())
    )


def node_health(
    state: node.NodeState, publisher: PublisherHealth, registration: RegistrationState
) -> NodeHealth:
    """Combine the parts (see the module docstring)."""
    devices = device_health(state)
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
    unhealthy = [d.device_name for d in devices if d.health is not Health.HEALTHY]
    if unhealthy:
        reasons.append(f"unhealthy devices: {', '.join(unhealthy)}")
    return NodeHealth(
        ready=not reasons,
        reasons=tuple(reasons),
        devices=devices,
        publisher=publisher,
        registration=registration,
    )
