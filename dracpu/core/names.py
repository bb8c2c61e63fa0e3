"""The driver's name, defined once: every other spelling of ``dra.cpu`` imports it from here.

It is upstream's name (kubernetes-sigs/dra-driver-cpu), so slices, claims, the kubelet plugin
socket and the CDI vendor stay interchangeable with the Go driver. Device attribute and capacity
names are qualified by it (``dra.cpu/numCPUs``).
"""

from __future__ import annotations

DRIVER_NAME = "dra.cpu"


def qualified(name: str) -> str:
    """``name`` in the driver's attribute domain: ``qualified("cpu") == "dra.cpu/cpu"``."""
    return f"{DRIVER_NAME}/{name}"
