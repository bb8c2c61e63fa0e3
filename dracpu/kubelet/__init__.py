"""The kubelet boundary: plugin registration and the DRA gRPC services on unix sockets.

Entry point: :func:`serve_kubelet_plugin` with a :class:`KubeletPluginConfig`, a
:class:`ClaimHandler` (the driver's prepare/unprepare logic) and a :class:`HealthBoard`.
"""

from dracpu.kubelet.errors import KubeletSocketError
from dracpu.kubelet.handler import (
    ClaimFailed,
    ClaimHandler,
    ClaimPrepared,
    ClaimRef,
    ClaimUnprepared,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)
from dracpu.kubelet.health import DeviceHealth, Health, HealthBoard
from dracpu.kubelet.paths import DEFAULT_KUBELET_ROOT, PluginPaths
from dracpu.kubelet.plugin import KubeletPluginConfig, RunningPlugin, serve_kubelet_plugin
from dracpu.kubelet.registration import RegistrationState, RegistrationStatusBoard
from dracpu.kubelet.unix_grpc import GrpcLimits

__all__ = [
    "DEFAULT_KUBELET_ROOT",
    "ClaimFailed",
    "ClaimHandler",
    "ClaimPrepared",
    "ClaimRef",
    "ClaimUnprepared",
    "DeviceHealth",
    "GrpcLimits",
    "Health",
    "HealthBoard",
    "KubeletPluginConfig",
    "KubeletSocketError",
    "PluginPaths",
    "PrepareResult",
    "PreparedDevice",
    "RegistrationState",
    "RegistrationStatusBoard",
    "RunningPlugin",
    "UnprepareResult",
    "serve_kubelet_plugin",
]
