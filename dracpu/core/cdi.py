"""The CDI contract a container sees, in upstream ``dra.cpu``'s exact format (pure).

kubernetes-sigs/dra-driver-cpu writes one CDI spec per prepared claim (``pkg/driver/cdi.go``):
kind ``dra.k8s.io/cpu``, one device ``claim-<uid>`` whose only edit is the environment entry
``DRA_CPUSET_<uid>=<cpu list>``, spec file ``dra.k8s.io-cpu_claim-<uid>.json``. Its NRI hook
reads back every env entry starting with ``DRA_CPUSET``, takes the text after ``DRA_CPUSET_`` as
the claim UID and parses the value as a Linux cpu list. dracpu writes and reads the same, so a
node can move between the two drivers without restarting pods.

Both the CDI writer (the shell) and the pinning policy use the functions here, so the variable
name and format exist once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dracpu.core.cpuset import CpuSet
from dracpu.errors import CpuSetParseError, InvalidValueError, shown

CDI_SPEC_VERSION = "0.8.0"
"""The spec version upstream writes."""
CDI_VENDOR = "dra.k8s.io"
CDI_CLASS = "cpu"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
ENV_PREFIX = "DRA_CPUSET"
"""Every env entry starting with this belongs to the driver (upstream's reserved prefix)."""

__all__ = [
    "CDI_CLASS",
    "CDI_KIND",
    "CDI_SPEC_VERSION",
    "CDI_VENDOR",
    "ENV_PREFIX",
    "CpusetEnvError",
    "cdi_device_id",
    "cdi_device_name",
    "cdi_spec",
    "cdi_spec_file_name",
    "env_entry",
    "env_name",
    "parse_env",
]


class CpusetEnvError(InvalidValueError):
    """A ``DRA_CPUSET*`` environment entry is malformed; names the entry."""


def cdi_device_name(claim_uid: str) -> str:
    """The CDI device of a claim: ``claim-<uid>``."""
    return f"claim-{claim_uid}"


def cdi_device_id(claim_uid: str) -> str:
    """The fully qualified CDI device ID the kubelet passes to the runtime."""
    return f"{CDI_KIND}={cdi_device_name(claim_uid)}"


def cdi_spec_file_name(claim_uid: str) -> str:
    """The spec's file name, as CDI's ``GenerateTransientSpecName`` + ``.json`` makes it."""
    return f"{CDI_VENDOR}-{CDI_CLASS}_{cdi_device_name(claim_uid)}.json"


def env_name(claim_uid: str) -> str:
    """The environment variable carrying a claim's CPUs: ``DRA_CPUSET_<uid>``."""
    return f"{ENV_PREFIX}_{claim_uid}"


def env_entry(claim_uid: str, cpus: CpuSet) -> str:
    """The ``NAME=value`` env entry of a claim, value in the canonical Linux list format."""
    return f"{env_name(claim_uid)}={cpus}"


def cdi_spec(claim_uid: str, cpus: CpuSet) -> dict[str, Any]:
    """The JSON-ready CDI spec of one prepared claim (what upstream writes)."""
    return {
        "cdiVersion": CDI_SPEC_VERSION,
        "kind": CDI_KIND,
        "devices": [
            {
                "name": cdi_device_name(claim_uid),
                "containerEdits": {"env": [env_entry(claim_uid, cpus)]},
            }
        ],
    }


def _named(name: str) -> str:
    """A variable name for a one-line message: as is, or quoted when it holds a newline or
    another unprintable character."""
    return name if name.isprintable() else shown(name)


def parse_env(env: Iterable[str], *, origin: str = "") -> dict[str, CpuSet]:
    """Claim UID → CPUs for every ``DRA_CPUSET_<uid>=<list>`` entry of a container's env.

    Entries not starting with ``DRA_CPUSET`` are ignored, as upstream does; so is a
    ``DRA_CPUSET…`` name without the ``_`` separator (upstream skips it too). Raises
    :class:`CpusetEnvError` naming the entry and ``origin`` for an entry without ``=``, an empty
    UID, an unparsable or empty cpu list, or a UID given twice with different CPUs.
    """
    found: dict[str, CpuSet] = {}
    for entry in env:
        if not entry.startswith(ENV_PREFIX):
            continue
        name, sep, value = entry.partition("=")
        if not sep:
            raise CpusetEnvError(
                f"malformed env entry {entry!r}: no '='", value=entry, origin=origin
            )
        if not name.startswith(ENV_PREFIX + "_"):
            continue
        uid = name[len(ENV_PREFIX) + 1 :]
        if not uid:
            raise CpusetEnvError(
                f"malformed env entry {entry!r}: no claim UID after {ENV_PREFIX}_",
                value=entry,
                origin=origin,
            )
        try:
            cpus = CpuSet.parse(value)
        except CpuSetParseError as exc:
            raise CpusetEnvError(
                f"malformed env entry {_named(name)}: {exc}", value=entry, origin=origin
            ) from exc
        if not cpus:
            raise CpusetEnvError(
                f"malformed env entry {_named(name)}: empty cpu list", value=entry, origin=origin
            )
        if uid in found and found[uid] != cpus:
            raise CpusetEnvError(
                f"env variable {_named(name)} given twice with different CPUs "
                f"({found[uid]} and {cpus})",
                value=entry,
                origin=origin,
            )
        found[uid] = cpus
    return found
