"""ResourceClaims (``resource.k8s.io/v1``) as the node sees them: JSON → typed, validated (pure).

:func:`parse_claim` keeps what prepare needs: the claim's identity, the allocation results of
driver ``dra.cpu`` in this node's pool (request, device, consumed ``dra.cpu/cpu``, shareID), the
per-request opaque configuration, and ``status.reservedFor``. Everything else is ignored.

The opaque configuration is upstream's ``api/v1alpha1`` object::

    {"apiVersion": "v1alpha1",
     "cpuConfig": {"cpuset": "2-5",                 # upstream: machine-mode explicit CPUs
                   "fullPCPUsOnly": true,           # dracpu: allocator options (upstream #45, #46)
                   "distributeAcrossNUMA": false,
                   "strategy": "packed"}}           # or "spread"

Rules, upstream's where upstream has them: configs of other drivers are ignored; a ``dra.cpu``
config must come from the claim (``FromClass`` is rejected); a config without ``requests`` targets
every request (the scheduler writes a config naming all of a claim's requests that way); at most
one config may target a request;
a ``cpuset`` config names exactly one request; unknown fields are rejected at every level.

Every error is a :class:`ClaimError` naming the claim, the request when there is one, and the
bad value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dracpu.core.allocator import AllocationOptions, Strategy
from dracpu.core.cpuset import CpuSet
from dracpu.core.names import DRIVER_NAME as DRIVER
from dracpu.core.quantity import parse_quantity
from dracpu.core.slices import CPU_CAPACITY
from dracpu.errors import CpuSetParseError, InvalidValueError, shown

OPAQUE_API_VERSION = "v1alpha1"
"""The only ``apiVersion`` of the opaque config (upstream ``api/v1alpha1.APIVersion``)."""

__all__ = [
    "OPAQUE_API_VERSION",
    "Claim",
    "ClaimError",
    "ClaimRef",
    "Consumer",
    "CpuConfig",
    "DeviceResult",
    "parse_claim",
    "parse_cpu_config",
    "parse_cpu_count",
    "parse_quantity",
]


class ClaimError(InvalidValueError):
    """A ResourceClaim cannot be used on this node; the message names claim, request, value."""

    def __init__(self, message: str, *, claim: str, request: str = "", value: object = None):
        self.claim = claim
        self.request = request
        where = f"ResourceClaim {claim}" + (f" request {request!r}" if request else "")
        super().__init__(f"{where}: {message}", value=value)


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """A claim's identity: namespace, name and UID (what the kubelet sends)."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """The ``cpuConfig`` of one request's opaque config; ``None`` fields were not given."""

    cpuset: CpuSet | None = None
    full_pcpus_only: bool | None = None
    distribute_across_numa: bool | None = None
    strategy: Strategy | None = None

    def options(self, defaults: AllocationOptions) -> AllocationOptions:
        """The allocator options: these fields over the daemon's ``defaults``."""
        return AllocationOptions(
            full_pcpus_only=(
                defaults.full_pcpus_only if self.full_pcpus_only is None else self.full_pcpus_only
            ),
            distribute_across_numa=(
                defaults.distribute_across_numa
                if self.distribute_across_numa is None
                else self.distribute_across_numa
            ),
            strategy=defaults.strategy if self.strategy is None else self.strategy,
        )


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One allocation result of ``dra.cpu`` in this node's pool.

    ``cpus`` is the consumed ``dra.cpu/cpu`` capacity (grouped devices), ``None`` when the
    result has none (individual devices). ``config`` is the opaque config targeting this
    result's request (empty when there is none).
    """

    request: str
    pool: str
    device: str
    cpus: int | None = None
    share_id: str | None = None
    config: CpuConfig = CpuConfig()
    driver: str = DRIVER


@dataclass(frozen=True, slots=True)
class Consumer:
    """One ``status.reservedFor`` entry (normally a Pod)."""

    resource: str
    name: str
    uid: str
    api_group: str = ""


@dataclass(frozen=True, slots=True)
class Claim:
    """A parsed ResourceClaim: identity, our allocation results, and who may use it."""

    ref: ClaimRef
    results: tuple[DeviceResult, ...]
    reserved_for: tuple[Consumer, ...] = ()

    @property
    def uid(self) -> str:
        """The claim's UID."""
        return self.ref.uid

    @property
    def namespace(self) -> str:
        """The claim's namespace."""
        return self.ref.namespace

    @property
    def name(self) -> str:
        """The claim's name."""
        return self.ref.name


# Kubernetes resource.Quantity: <signed number><suffix>, suffix binary (Ki..Ei), decimal
# (n u m "" k M G T P E) or a decimal exponent (e3, E-2).
def parse_cpu_count(text: object, *, claim: str, request: str, device: str = "") -> int:
    """The whole, positive CPU count of a consumed ``dra.cpu/cpu`` quantity.

    ``"4"`` and ``"4000m"`` give 4; ``"1500m"``, ``"0"`` and ``"-2"`` raise :class:`ClaimError`
    naming the claim, the request and the value.
    """
    where = f" of device {device}" if device else ""
    try:
        value = parse_quantity(text)
    except InvalidValueError as exc:
        raise ClaimError(f"{CPU_CAPACITY}{where}: {exc}", claim=claim, request=request) from exc
    if value.denominator != 1:
        raise ClaimError(
            f"{CPU_CAPACITY}{where} is {text!r}, not a whole number of CPUs",
            claim=claim,
            request=request,
            value=text,
        )
    if value <= 0:
        raise ClaimError(
            f"{CPU_CAPACITY}{where} is {text!r}; it must be positive",
            claim=claim,
            request=request,
            value=text,
        )
    return int(value)


_CONFIG_FIELDS = {"apiVersion", "cpuConfig"}
_CPU_CONFIG_FIELDS = {"cpuset", "fullPCPUsOnly", "distributeAcrossNUMA", "strategy"}


def parse_cpu_config(parameters: object, *, claim: str, request: str = "") -> CpuConfig:
    """Validate an opaque ``dra.cpu`` parameters object (``api/v1alpha1``) into a CpuConfig.

    ``apiVersion`` must be ``v1alpha1``; unknown fields, wrong types, a malformed or empty
    ``cpuset`` and an unknown ``strategy`` raise :class:`ClaimError`.
    """

    def fail(message: str, value: object = None) -> ClaimError:
        return ClaimError(f"opaque config: {message}", claim=claim, request=request, value=value)

    if not isinstance(parameters, Mapping):
        raise fail(f"parameters must be an object, got {parameters!r}", parameters)
    unknown = sorted(set(parameters) - _CONFIG_FIELDS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r} (known: apiVersion, cpuConfig)", unknown[0])
    version = parameters.get("apiVersion")
    if version != OPAQUE_API_VERSION:
        raise fail(f"unsupported apiVersion {version!r} (want {OPAQUE_API_VERSION!r})", version)
    body = parameters.get("cpuConfig", {})
    if not isinstance(body, Mapping):
        raise fail(f"cpuConfig must be an object, got {body!r}", body)
    unknown = sorted(set(body) - _CPU_CONFIG_FIELDS)
    if unknown:
        raise fail(
            f"unknown field cpuConfig.{unknown[0]} "
            f"(known: {', '.join(sorted(_CPU_CONFIG_FIELDS))})",
            unknown[0],
        )
    cpuset: CpuSet | None = None
    if "cpuset" in body:
        text = body["cpuset"]
        if not isinstance(text, str):
            raise fail(f"cpuConfig.cpuset must be a string, got {text!r}", text)
        try:
            cpuset = CpuSet.parse(text)
        except CpuSetParseError as exc:
            raise fail(f"cpuConfig.cpuset {shown(text)}: {exc}", text) from exc
        if not cpuset:
            raise fail("cpuConfig.cpuset is empty", text)
    flags: dict[str, bool | None] = {}
    for key in ("fullPCPUsOnly", "distributeAcrossNUMA"):
        value = body.get(key)
        if value is not None and not isinstance(value, bool):
            raise fail(f"cpuConfig.{key} must be true or false, got {value!r}", value)
        flags[key] = value
    strategy: Strategy | None = None
    if (raw := body.get("strategy")) is not None:
        try:
            strategy = Strategy(raw)
        except ValueError:
            raise fail(f"cpuConfig.strategy {raw!r} is not 'packed' or 'spread'", raw) from None
    return CpuConfig(
        cpuset=cpuset,
        full_pcpus_only=flags["fullPCPUsOnly"],
        distribute_across_numa=flags["distributeAcrossNUMA"],
        strategy=strategy,
    )


def _base_request(request: str) -> str:
    return request.split("/", 1)[0]


def _configs_by_request(
    configs: object, ref: str, driver: str, all_requests: set[str]
) -> dict[str, CpuConfig]:
    """Our driver's opaque configs, keyed by the request name each one targets; a config
    without ``requests`` targets ``all_requests`` (the base names of this driver's results)."""
    if configs is None:
        return {}
    if not isinstance(configs, Sequence) or isinstance(configs, str):
        raise ClaimError(f"status.allocation.devices.config is not a list: {configs!r}", claim=ref)
    found: dict[str, CpuConfig] = {}
    for index, entry in enumerate(configs):
        if not isinstance(entry, Mapping):
            raise ClaimError(f"devices.config[{index}] is not an object: {entry!r}", claim=ref)
        opaque = entry.get("opaque")
        if not isinstance(opaque, Mapping) or opaque.get("driver") != driver:
            continue
        targets = entry.get("requests") or []
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ClaimError(
                f"devices.config[{index}].requests is malformed: {targets!r}", claim=ref
            )
        if entry.get("source") != "FromClaim":
            raise ClaimError(
                f"opaque config from a DeviceClass (source {entry.get('source')!r}) is not "
                "supported; define it per request in the ResourceClaim",
                claim=ref,
                value=entry.get("source"),
            )
        if not targets:
            # The scheduler clears ``requests`` of a claim config that names every request of
            # the claim ("empty means all"); upstream matches such a config to every result.
            targets = sorted(all_requests)
        config = parse_cpu_config(opaque.get("parameters"), claim=ref, request=",".join(targets))
        if config.cpuset is not None and len(targets) != 1:
            raise ClaimError(
                f"opaque config with cpuset {config.cpuset} targets {len(targets)} requests "
                f"({', '.join(targets)}); a cpuset config must name exactly one",
                claim=ref,
                value=targets,
            )
        for target in targets:
            if target in found:
                raise ClaimError(
                    "targeted by more than one dra.cpu opaque config; at most one is allowed",
                    claim=ref,
                    request=target,
                )
            found[target] = config
    return found


def _config_for(configs: Mapping[str, CpuConfig], request: str) -> CpuConfig:
    if request in configs:
        return configs[request]
    return configs.get(_base_request(request), CpuConfig())


def _str_field(obj: Mapping[str, Any], key: str, *, claim: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ClaimError(f"{where}.{key} is missing or not a string: {value!r}", claim=claim)
    return value


def parse_claim(obj: Mapping[str, Any], *, pool: str, driver: str = DRIVER) -> Claim:
    """Parse a ResourceClaim JSON object for preparation on the node whose pool is ``pool``.

    Raises :class:`ClaimError` when the claim is not allocated, an allocation result of
    ``driver`` names another pool (the claim is not for this node), a consumed ``dra.cpu/cpu``
    is not a positive whole number, or the opaque config breaks the rules in the module doc.
    """
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise ClaimError("metadata is missing", claim="?")
    namespace = metadata.get("namespace") or ""
    name = metadata.get("name") or "?"
    uid = metadata.get("uid") or ""
    where = f"{namespace}/{name}"
    if not isinstance(uid, str) or not uid:
        raise ClaimError("metadata.uid is missing", claim=where)
    ref = ClaimRef(str(namespace), str(name), uid)
    label = str(ref)
    status = obj.get("status") or {}
    allocation = status.get("allocation") if isinstance(status, Mapping) else None
    if not isinstance(allocation, Mapping):
        raise ClaimError("not allocated (status.allocation is missing)", claim=label)
    devices = allocation.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise ClaimError(f"status.allocation.devices is not an object: {devices!r}", claim=label)
    raw_results = devices.get("results")
    if raw_results is None:
        raw_results = []
    if not isinstance(raw_results, list):
        raise ClaimError("status.allocation.devices.results is not a list", claim=label)
    ours: list[Mapping[str, Any]] = []
    for index, result in enumerate(raw_results):
        if not isinstance(result, Mapping):
            raise ClaimError(f"devices.results[{index}] is not an object: {result!r}", claim=label)
        if result.get("driver") == driver:
            ours.append(result)
    every = {_base_request(str(r.get("request", ""))) for r in ours}
    configs = _configs_by_request(devices.get("config"), label, driver, every)
    results: list[DeviceResult] = []
    for result in ours:
        request = _str_field(result, "request", claim=label, where="devices.results[]")
        device = _str_field(result, "device", claim=label, where=f"result of request {request!r}")
        result_pool = _str_field(
            result, "pool", claim=label, where=f"result of request {request!r}"
        )
        if result_pool != pool:
            raise ClaimError(
                f"device {device} is in pool {result_pool!r}, not this node's pool {pool!r}",
                claim=label,
                request=request,
                value=result_pool,
            )
        consumed = result.get("consumedCapacity") or {}
        if not isinstance(consumed, Mapping):
            raise ClaimError(
                f"consumedCapacity of device {device} is not an object: {consumed!r}",
                claim=label,
                request=request,
            )
        cpus = None
        if CPU_CAPACITY in consumed:
            cpus = parse_cpu_count(
                consumed[CPU_CAPACITY], claim=label, request=request, device=device
            )
        share_id = result.get("shareID")
        results.append(
            DeviceResult(
                request=request,
                pool=result_pool,
                device=device,
                cpus=cpus,
                share_id=share_id if isinstance(share_id, str) and share_id else None,
                config=_config_for(configs, request),
                driver=driver,
            )
        )
    reserved: list[Consumer] = []
    entries = status.get("reservedFor") if isinstance(status, Mapping) else None
    if entries is not None and (not isinstance(entries, list)):
        raise ClaimError(f"status.reservedFor is not a list: {shown(entries)}", claim=label)
    for entry in entries or []:
        if isinstance(entry, Mapping):
            reserved.append(
                Consumer(
                    resource=str(entry.get("resource", "")),
                    name=str(entry.get("name", "")),
                    uid=str(entry.get("uid", "")),
                    api_group=str(entry.get("apiGroup", "") or ""),
                )
            )
    return Claim(ref=ref, results=tuple(results), reserved_for=tuple(reserved))
