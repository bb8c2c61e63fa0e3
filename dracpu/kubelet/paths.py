"""Where the kubelet-facing sockets live (same rules as the upstream Go kubelet-plugin helper).

* registration: ``<kubelet root>/plugins_registry/<driver>-reg.sock``, watched by the kubelet;
* DRA service: ``<kubelet root>/plugins/<driver>/dra.sock``, announced in GetInfo.

With rolling updates two plugin pods run side by side, so both names carry the pod UID:
``<driver>-<pod UID>-reg.sock`` and ``dra-<pod UID>.sock`` (the data directory is shared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dracpu.errors import InvalidValueError

DEFAULT_KUBELET_ROOT = Path("/var/lib/kubelet")

# DNS-1123 subdomain, at most 63 characters (the kubelet's and API server's driver name rule).
_DRIVER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Pod UIDs are RFC 4122 UUIDs; accept any token that is safe inside a file name.
_POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


@dataclass(frozen=True, slots=True)
class PluginPaths:
    """The two socket paths of one plugin instance."""

    registration_socket: Path
    dra_socket: Path

    @classmethod
    def for_driver(
        cls,
        driver_name: str,
        kubelet_root: Path = DEFAULT_KUBELET_ROOT,
        *,
        plugin_dir: Path | None = None,
        registry_dir: Path | None = None,
        pod_uid: str | None = None,
    ) -> PluginPaths:
        """Compute the socket paths; raises :class:`InvalidValueError` naming a bad input.

        ``plugin_dir`` defaults to ``<kubelet_root>/plugins/<driver_name>`` and ``registry_dir``
        to ``<kubelet_root>/plugins_registry``. ``pod_uid`` switches to rolling-update names.
        """
        if len(driver_name) > 63 or not _DRIVER_NAME.fullmatch(driver_name):
            raise InvalidValueError(
                f"driver name {driver_name!r} is not a DNS subdomain of at most 63 characters",
                value=driver_name,
                origin="kubelet plugin driver name",
            )
        if not kubelet_root.is_absolute():
            raise InvalidValueError(
                f"kubelet root {str(kubelet_root)!r} is not an absolute path",
                value=kubelet_root,
                origin="kubelet root directory",
            )
        for name, value in (("plugin directory", plugin_dir), ("registry directory", registry_dir)):
            if value is not None and not value.is_absolute():
                raise InvalidValueError(
                    f"{name} {str(value)!r} is not an absolute path",
                    value=value,
                    origin=f"kubelet {name}",
                )
        if pod_uid is not None and not _POD_UID.fullmatch(pod_uid):
            raise InvalidValueError(
                f"pod UID {pod_uid!r} is not a UID (letters, digits and '-', at most 63)",
                value=pod_uid,
                origin="pod UID for rolling-update socket names",
            )
        plugin_dir = plugin_dir or kubelet_root / "plugins" / driver_name
        registry_dir = registry_dir or kubelet_root / "plugins_registry"
        uid_part = f"-{pod_uid}" if pod_uid else ""
        return cls(
            registration_socket=registry_dir / f"{driver_name}{uid_part}-reg.sock",
            dra_socket=plugin_dir / f"dra{uid_part}.sock",
        )
