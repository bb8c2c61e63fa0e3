"""CDI specs: one file per prepared claim, in the upstream ``dra.cpu`` driver's format.

Upstream (``pkg/driver/cdi.go``) writes, for claim UID ``<uid>`` holding CPUs ``<cpus>``, the
file ``dra.k8s.io-cpu_claim-<uid>.json`` (the CDI library's transient spec name) containing::

    {"cdiVersion": "0.8.0", "kind": "dra.k8s.io/cpu",
     "devices": [{"name": "claim-<uid>",
                  "containerEdits": {"env": ["DRA_CPUSET_<uid>=<cpus>"]}}]}

and answers prepare with the CDI device ID ``dra.k8s.io/cpu=claim-<uid>``. dracpu writes the same
bytes' meaning under the same name, so a node can switch drivers with its claims in place.

The file handling (atomic writes, reading back, reconcile at start) is
:class:`dracpu.cdi_dir.SpecDir`, shared with the ``dra.memory`` specs.
"""

from __future__ import annotations

from typing import Any

from dracpu.cdi_dir import CdiError, Reconciled, SpecDir, check_uid
from dracpu.core.cdi import (
    CDI_CLASS,
    CDI_VENDOR,
    cdi_device_id,
    cdi_spec,
    cdi_spec_file_name,
    parse_env,
)
from dracpu.core.cpuset import CpuSet

__all__ = ["CdiDir", "CdiError", "Reconciled", "device_id", "spec_document", "spec_file_name"]


def device_id(uid: str) -> str:
    """The fully qualified CDI device ID returned to the kubelet (UID checked)."""
    return cdi_device_id(check_uid(uid))


def spec_file_name(uid: str) -> str:
    """The spec's file name (CDI's transient name for vendor, class and device; UID checked)."""
    return cdi_spec_file_name(check_uid(uid))


def spec_document(uid: str, cpus: CpuSet) -> dict[str, Any]:
    """The CDI spec of one claim, as JSON-ready data (UID checked)."""
    return cdi_spec(check_uid(uid), cpus)


class CdiDir(SpecDir[CpuSet]):
    """The ``dra.cpu`` specs in the CDI directory (``--cdi-dir``): claim UID -> its CPUs."""

    file_prefix = f"{CDI_VENDOR}-{CDI_CLASS}_claim-"

    def document(self, uid: str, value: CpuSet) -> dict[str, Any]:
        """The spec of claim ``uid`` on CPUs ``value`` (upstream's form)."""
        return spec_document(uid, value)

    def value_of(self, uid: str, env: tuple[str, ...], origin: str) -> CpuSet | None:
        """The CPUs the spec's ``DRA_CPUSET_<uid>`` env entry names (None: no such entry)."""
        return parse_env(env, origin=origin).get(uid)
