"""The API resources dracpu uses and how their REST paths are spelled.

A :class:`Resource` names a kind by group, version and plural; :meth:`Resource.path` builds
``/api/v1/...`` (core group) or ``/apis/<group>/<version>/...`` paths, namespaced or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "DEVICE_CLASSES",
    "NODES",
    "PODS",
    "RESOURCE_CLAIMS",
    "RESOURCE_SLICES",
    "Resource",
]


@dataclass(frozen=True, slots=True)
class Resource:
    """One REST resource (``group`` is "" for the core group)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        """``apiVersion`` of objects of this resource (``v1``, ``resource.k8s.io/v1``)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, *, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        """The REST path; ``namespace`` None on a namespaced resource means all namespaces."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            root += f"/namespaces/{quote(namespace, safe='')}"
        elif not self.namespaced and namespace is not None:
            raise ValueError(f"{self.plural} is cluster-scoped; got namespace {namespace!r}")
        root += f"/{self.plural}"
        if name is not None:
            if not name:
                raise ValueError(f"empty {self.kind} name")
            root += f"/{quote(name, safe='')}"
        if subresource:
            if name is None:
                raise ValueError("a subresource needs an object name")
            root += f"/{subresource}"
        return root


NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
RESOURCE_SLICES = Resource("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", False)
RESOURCE_CLAIMS = Resource("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", True)
DEVICE_CLASSES = Resource("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", False)
