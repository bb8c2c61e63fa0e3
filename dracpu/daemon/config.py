"""The configuration of ``dracpu run``: upstream's flags and config file, plus dracpu's own.

Three layers, applied in order: built-in defaults, then the ``--config`` file, then the flags
given on the command line (only those actually given). That is upstream's
``internal/driverconfig`` order, and the keys are upstream's (``cpuDeviceMode``, ``groupBy``,
``reservedCPUs``, ...), so a node can move between the two drivers with the same file.

The file is strict like upstream's: YAML (or JSON) with a mapping at the top; a duplicate key, a
key matching no field, a key spelled in another case (``CPUDeviceMode``) and a key upstream
refuses in files (``bindAddress``, ``exposePCIeRoots``, ``kubeletRootDir``: flags only) each give
a :class:`ConfigError` naming the key and the file. ``apiVersion``, when present, must be
``v1alpha1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dracpu.cgroups.layout import Driver
from dracpu.core.allocator import AllocationOptions, Strategy
from dracpu.core.cpuset import CpuSet
from dracpu.core.slices import DeviceMode, GroupBy
from dracpu.errors import CpuSetParseError, InvalidValueError, shown

__all__ = [
    "CONFIG_API_VERSION",
    "FIELDS",
    "ConfigError",
    "EnforcementMode",
    "Field",
    "RunConfig",
    "load_file",
    "node_name",
    "resolve",
]

CONFIG_API_VERSION = "v1alpha1"
MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this is refused unread (it is a handful of keys)."""
MAX_SECONDS = 86400.0 * 365
"""The largest duration setting accepted (a year); NaN and infinity are refused."""


class EnforcementMode(enum.StrEnum):
    """How container cpusets are enforced (see :mod:`dracpu.daemon.enforcement`)."""

    AUTO = "auto"
    NRI = "nri"
    CGROUPS = "cgroups"


class ConfigError(InvalidValueError):
    """A configuration value or file is invalid; the message names the key and its source."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The effective configuration of one ``dracpu run`` (after defaults, file and flags)."""

    kubeconfig: str = ""
    hostname_override: str = ""
    bind_address: str = ":8080"
    reserved_cpus: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)
    cpu_device_mode: DeviceMode = DeviceMode.GROUPED
    group_by: GroupBy = GroupBy.NUMANODE
    expose_pcie_roots: bool = False
    sysfs_root: Path = Path("/sys")
    kubelet_root_dir: Path = Path("/var/lib/kubelet")
    publish_node_allocatable_resource_mapping: bool = False
    # dracpu's own
    cdi_dir: Path = Path("/var/run/cdi")
    state_dir: Path = Path("/var/lib/dracpu")
    nri_socket: Path = Path("/var/run/nri/nri.sock")
    enforcement: EnforcementMode = EnforcementMode.AUTO
    cgroup_root: Path = Path("/sys/fs/cgroup")
    cgroup_driver: Driver = Driver.CGROUPFS
    kubelet_cgroup_root: str = "/"
    full_pcpus_only: bool = False
    distribute_across_numa: bool = False
    strategy: Strategy = Strategy.PACKED
    release_grace_period: float = 60.0
    device_metadata: bool = True

    @property
    def allocation_defaults(self) -> AllocationOptions:
        """The allocator options a claim gets unless its opaque config says otherwise."""
        return AllocationOptions(
            full_pcpus_only=self.full_pcpus_only,
            distribute_across_numa=self.distribute_across_numa,
            strategy=self.strategy,
        )

    def to_json(self) -> dict[str, Any]:
        """Every setting under its config-file key, as plain JSON values (for logs and status)."""
        out: dict[str, Any] = {}
        for spec in FIELDS:
            value = getattr(self, spec.attr)
            out[spec.key] = str(value) if spec.text else value
        return out

    def log_line(self) -> str:
        """The effective configuration in one line (logged at start)."""
        return json.dumps(self.to_json(), separators=(",", ":"))


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {shown(value)}", value=value, origin=where)
    return value


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {shown(value)}", value=value, origin=where)
    return value


def _cgroup_path(value: object, where: str) -> str:
    text = _string(value, where)
    if not text.startswith("/") or ".." in text.split("/"):
        raise ConfigError(
            f"must be an absolute cgroup path without '..', got {text!r}", value=value, origin=where
        )
    return text


def _abs_path(value: object, where: str) -> Path:
    text = _string(value, where)
    if not text or not text.startswith("/"):
        raise ConfigError(f"must be an absolute path, got {shown(text)}", value=value, origin=where)
    return Path(text)


def _cpuset(value: object, where: str) -> CpuSet:
    try:
        return CpuSet.parse(_string(value, where), origin=where)
    except CpuSetParseError as exc:
        raise ConfigError(str(exc), value=value, origin="") from exc


def _enum(kind: type[enum.StrEnum]) -> Callable[[object, str], Any]:
    def parse(value: object, where: str) -> Any:
        text = _string(value, where)
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise ConfigError(
                f"invalid value {shown(text)}: must be one of {allowed}", value=value, origin=where
            ) from None

    return parse


def _seconds(value: object, where: str) -> float:
    if isinstance(value, str) and where.startswith("flag "):
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_SECONDS
        or math.isnan(value)
    ):
        raise ConfigError(
            f"must be a number of seconds from 0 to {MAX_SECONDS:.0f}, got {shown(value)}",
            value=value,
            origin=where,
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its config-file key, its flag, the RunConfig attribute and its parser.

    ``file_refusal`` is set for keys that may not appear in a file (upstream's excluded
    fields), saying what to use instead; ``flag`` is empty for keys that are file-only.
    """

    key: str
    flag: str
    attr: str
    parse: Callable[[object, str], Any]
    help: str
    file_refusal: str = ""
    is_bool: bool = False
    text: bool = True


FIELDS: tuple[Field, ...] = (
    Field("kubeconfig", "--kubeconfig", "kubeconfig", _string, "path to a kubeconfig file"),
    Field(
        "hostnameOverride",
        "--hostname-override",
        "hostname_override",
        _string,
        "node name to use instead of the host name",
    ),
    Field(
        "bindAddress",
        "--bind-address",
        "bind_address",
        _string,
        "address of the HTTP endpoint (/healthz, /metrics)",
        file_refusal="use the --bind-address flag (or the chart's healthzPort) instead",
    ),
    Field(
        "reservedCPUs",
        "--reserved-cpus",
        "reserved_cpus",
        _cpuset,
        "CPUs kept for the system: never published or allocated",
    ),
    Field(
        "cpuDeviceMode",
        "--cpu-device-mode",
        "cpu_device_mode",
        _enum(DeviceMode),
        "grouped: one device per --group-by domain; individual: one device per CPU",
    ),
    Field(
        "groupBy",
        "--group-by",
        "group_by",
        _enum(GroupBy),
        "domain of a grouped device: numanode, socket or machine",
    ),
    Field(
        "exposePCIeRoots",
        "--expose-pcie-roots",
        "expose_pcie_roots",
        _boolean,
        "publish PCIe roots as device attributes",
        file_refusal="use the --expose-pcie-roots flag (or the chart's args.exposePCIeRoots)",
        is_bool=True,
        text=False,
    ),
    Field("sysfsRoot", "--sysfs-root", "sysfs_root", _abs_path, "sysfs tree to read"),
    Field(
        "kubeletRootDir",
        "--kubelet-root-dir",
        "kubelet_root_dir",
        _abs_path,
        "kubelet root directory (plugins_registry/ and plugins/ below it)",
        file_refusal="use the --kubelet-root-dir flag (or the chart's kubeletRootDir value)",
    ),
    Field(
        "publishNodeAllocatableResourceMapping",
        "",  # File only, as upstream.
        "publish_node_allocatable_resource_mapping",
        _boolean,
        "KEP-5517: map each device onto the node's cpu allocatable (upstream's key)",
        is_bool=True,
        text=False,
    ),
    Field("cdiDir", "--cdi-dir", "cdi_dir", _abs_path, "directory of the CDI specs"),
    Field(
        "stateDir",
        "--state-dir",
        "state_dir",
        _abs_path,
        "directory of the checkpoint and the status socket",
    ),
    Field("nriSocket", "--nri-socket", "nri_socket", _abs_path, "the runtime's NRI socket"),
    Field(
        "enforcement",
        "--enforcement",
        "enforcement",
        _enum(EnforcementMode),
        "auto (NRI, cgroup fallback while NRI is unavailable), nri or cgroups",
    ),
    Field("cgroupRoot", "--cgroup-root", "cgroup_root", _abs_path, "the cgroup mount point"),
    Field(
        "cgroupDriver",
        "--cgroup-driver",
        "cgroup_driver",
        _enum(Driver),
        "the kubelet's cgroup driver: cgroupfs or systemd",
    ),
    Field(
        "kubeletCgroupRoot",
        "--kubelet-cgroup-root",
        "kubelet_cgroup_root",
        _cgroup_path,
        "the kubelet's --cgroup-root (its kubepods cgroup lives below it)",
    ),
    Field(
        "fullPCPUsOnly",
        "--full-pcpus-only",
        "full_pcpus_only",
        _boolean,
        "allocate whole cores only (default for claims; per-claim config may override)",
        is_bool=True,
        text=False,
    ),
    Field(
        "distributeAcrossNUMA",
        "--distribute-across-numa",
        "distribute_across_numa",
        _boolean,
        "spread a claim evenly over NUMA nodes when it needs more than one",
        is_bool=True,
        text=False,
    ),
    Field("strategy", "--strategy", "strategy", _enum(Strategy), "packed or spread"),
    Field(
        "releaseGracePeriod",
        "--release-grace-period",
        "release_grace_period",
        _seconds,
        "seconds after start before claims missing from the API are released",
        text=False,
    ),
    Field(
        "enableDeviceMetadata",
        "--enable-device-metadata",
        "device_metadata",
        _boolean,
        "write KEP-5304 device metadata files (dra.cpu/allocatedNumCPUs) and their CDI mounts",
        is_bool=True,
        text=False,
    ),
)

_BY_KEY = {f.key: f for f in FIELDS}
_REMOVED = {
    "sysfsOverlay": "dracpu reads a whole sysfs tree instead; use sysfsRoot (--sysfs-root)",
}


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            mark = key_node.start_mark
            raise ConfigError(
                f"key {shown(key)} (line {mark.line + 1}) is not a string",
                value=key,
                origin=loader.name,
            )
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(
                f"duplicate key {shown(key)} (line {mark.line + 1})", value=key, origin=loader.name
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_file(path: Path) -> dict[str, Any]:
    """Read and check a config file; returns its settings by RunConfig attribute.

    Raises :class:`ConfigError` naming the file and the key for every problem upstream refuses
    (all case-variant keys are named at once, sorted, as upstream does).
    """
    origin = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file is larger than {MAX_CONFIG_BYTES} bytes", value=origin, origin=origin
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", value=origin, origin=origin) from exc
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # Raises for a control character in the text.
        loader.name = origin
        doc = loader.get_single_data()
    except ConfigError:
        raise
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: huge int literal
        raise ConfigError(f"cannot parse config file: {exc}", value=origin, origin=origin) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("the config file must hold a mapping", value=doc, origin=origin)
    doc = dict(doc)
    if "apiVersion" in doc:
        if doc["apiVersion"] != CONFIG_API_VERSION:
            raise ConfigError(
                f"unsupported apiVersion {shown(doc['apiVersion'])}, want {CONFIG_API_VERSION!r}",
                value=doc["apiVersion"],
                origin=origin,
            )
        del doc["apiVersion"]
    canonical = sorted([*_BY_KEY, *_REMOVED, "apiVersion"])
    problems = []
    for key in sorted(map(str, doc)):
        if key in canonical:
            continue
        want = next((c for c in canonical if c.lower() == key.lower()), None)
        if want is not None:
            problems.append(
                f"key {shown(key)} is spelled differently from the schema; use {want!r}"
            )
        else:
            problems.append(f"unknown key {shown(key)}")
    if problems:
        raise ConfigError("; ".join(problems), value=sorted(map(str, doc)), origin=origin)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _REMOVED:
            raise ConfigError(
                f"key {key!r} is not supported: {_REMOVED[key]}", value=key, origin=origin
            )
        spec = _BY_KEY[key]
        if spec.file_refusal:
            raise ConfigError(
                f"key {key!r} is not configurable via the config file; {spec.file_refusal}",
                value=key,
                origin=origin,
            )
        out[spec.attr] = spec.parse(value, f"{origin}: key {key!r}")
    return out


def resolve(flags: Mapping[str, object], config_file: Path | None) -> RunConfig:
    """Defaults, then ``config_file``, then ``flags`` (RunConfig attribute -> raw flag value,
    only the flags the user gave). Raises :class:`ConfigError` naming the bad key or flag."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_file(config_file))
    by_attr = {f.attr: f for f in FIELDS}
    for attr, raw in flags.items():
        spec = by_attr.get(attr)
        if spec is None:
            raise ConfigError(f"unknown setting {attr!r}", value=attr, origin="flags")
        values[attr] = spec.parse(raw, f"flag {spec.flag}")
    return dataclasses.replace(RunConfig(), **values)


def node_name(config: RunConfig, hostname: Callable[[], str] = socket.gethostname) -> str:
    """The node's name: ``--hostname-override`` or the host name, trimmed and lower-cased (as
    upstream's ``GetHostname``). Raises :class:`ConfigError` if both are empty."""
    name = (config.hostname_override or hostname()).strip().lower()
    if not name:
        raise ConfigError(
            "empty node name; set --hostname-override", value="", origin="hostname-override"
        )
    return name
