"""dracpu: a Kubernetes DRA driver for CPUs, drop-in compatible with ``dra.cpu``."""

from dracpu.core.names import DRIVER_NAME as DRIVER_NAME
from dracpu.errors import DracpuError as DracpuError

__all__ = ["DRIVER_NAME", "DracpuError"]
