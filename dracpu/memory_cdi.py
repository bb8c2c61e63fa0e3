"""CDI specs of ``dra.memory`` claims: one file per prepared claim, in the memory driver's form.

For claim ``<uid>`` the file ``dra.k8s.io-memory_claim-<uid>.json`` holds one device
``claim-<uid>`` of kind ``dra.k8s.io/memory`` whose env is the claim's ``DRAMEMORY_*`` entries
(:func:`dracpu.core.memory_prepare.memory_env`); prepare answers with the CDI device ID
``dra.k8s.io/memory=claim-<uid>``. The CPU driver's specs (``dra.k8s.io-cpu_...``) live in the
same directory and are never touched here.

The file handling (atomic writes, reading back, reconcile at start) is
:class:`dracpu.cdi_dir.SpecDir`, shared with the ``dra.cpu`` specs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dracpu.cdi_dir import SpecDir
from dracpu.core.cdi import CDI_SPEC_VERSION
from dracpu.core.memory_prepare import CDI_CLASS, CDI_KIND, CDI_VENDOR, cdi_device_name

__all__ = ["MemoryCdiDir", "memory_spec_document"]


def memory_spec_document(uid: str, env: Sequence[str]) -> dict[str, Any]:
    """The JSON-ready CDI spec of one prepared ``dra.memory`` claim."""
    return {
        "cdiVersion": CDI_SPEC_VERSION,
        "kind": CDI_KIND,
        "devices": [{"name": cdi_device_name(uid), "containerEdits": {"env": list(env)}}],
    }


class MemoryCdiDir(SpecDir[tuple[str, ...]]):
    """The ``dra.memory`` specs in the CDI directory (``--cdi-dir``): claim UID -> its env."""

    file_prefix = f"{CDI_VENDOR}-{CDI_CLASS}_claim-"

    def document(self, uid: str, value: Sequence[str]) -> dict[str, Any]:
        """The spec of claim ``uid`` whose env is ``value``."""
        return memory_spec_document(uid, value)

    def value_of(self, uid: str, env: tuple[str, ...], origin: str) -> tuple[str, ...] | None:
        """The env entries themselves (``DRAMEMORY_*``)."""
        return env
