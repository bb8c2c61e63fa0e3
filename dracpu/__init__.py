"""dracpu: a Kubernetes DRA driver for CPUs, drop-in compatible with ``dra.cpu``."""

from dracpu.errors import DracpuError as DracpuError

DRIVER_NAME = "dra.cpu"

__all__ = ["DRIVER_NAME", "DracpuError"]
