"""Prometheus metrics: upstream ``dra_cpu_*`` names and labels, plus dracpu's own.

Upstream's set (kubernetes-sigs/dra-driver-cpu ``pkg/metrics``) is kept name for name, label for
label and bucket for bucket, so dashboards built for the Go driver keep working. dracpu adds its
own ``dracpu_*`` series for the parts upstream lacks (NRI latency, checkpoint, supervision,
cgroup fallback).

Every series lives in a private :class:`~prometheus_client.CollectorRegistry` owned by one
:class:`DriverMetrics`, never the process-global default, so tests and several daemons in one
process do not collide. The allocation gauges are read from a callback at scrape time
(:meth:`DriverMetrics.watch_allocation`): nothing is computed between scrapes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "AllocationCounts", "DriverMetrics", "Result"]

_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Prometheus' default buckets (``prometheus.DefBuckets``), as upstream's prepare histogram."""

_CLAIM_CPU_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0)
"""Latency buckets for sub-millisecond paths (NRI requests, fsync'd checkpoint writes)."""


class Result(enum.StrEnum):
    """The ``result`` label of the per-claim counters, as upstream spells it."""

    SUCCESS = "success"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class AllocationCounts:
    """What the allocation gauges show: CPU counts and the number of prepared claims."""

    allocated_cpus: int
    available_cpus: int
    reserved_cpus: int
    active_claims: int


class DriverMetrics:
    """All of dracpu's series in one private registry; :meth:`render` is the scrape body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._allocated = Gauge(
            "dra_cpu_allocated_cpus",
            "Number of CPUs currently allocated to prepared resource claims.",
            registry=reg,
        )
        self._available = Gauge(
            "dra_cpu_available_cpus",
            "Number of CPUs available for allocation after reserved and active claim CPUs "
            "are excluded.",
            registry=reg,
        )
        self._reserved = Gauge(
            "dra_cpu_reserved_cpus",
            "Number of CPUs reserved and excluded from DRA management.",
            registry=reg,
        )
        self._active = Gauge(
            "dra_cpu_resource_claims_active",
            "Number of resource claims currently recorded as active by the allocation store.",
            registry=reg,
        )
        self.prepare_claims = Counter(
            "dra_cpu_prepare_claims",
            "Total number of per-claim PrepareResourceClaims results.",
            ["result"],
            registry=reg,
        )
        self.unprepare_claims = Counter(
            "dra_cpu_unprepare_claims",
            "Total number of per-claim UnprepareResourceClaims results.",
            ["result"],
            registry=reg,
        )
        self.prepare_duration = Histogram(
            "dra_cpu_prepare_claim_duration_seconds",
            "Duration of per-claim prepare operations in seconds.",
            buckets=_DEFAULT_BUCKETS,
            registry=reg,
        )
        self.claim_allocated_cpus = Histogram(
            "dra_cpu_claim_allocated_cpus",
            "Number of CPUs allocated for each newly successful claim allocation.",
            buckets=_CLAIM_CPU_BUCKETS,
            registry=reg,
        )
        for result in Result:
            self.prepare_claims.labels(result=result.value)
            self.unprepare_claims.labels(result=result.value)
        # dracpu's own series.
        self.nri_request_seconds = Histogram(
            "dracpu_nri_request_duration_seconds",
            "Time to answer one NRI request from the runtime, by event.",
            ["event"],
            buckets=_FAST_BUCKETS,
            registry=reg,
        )
        self._slice_writes = _SliceWrites()
        reg.register(self._slice_writes)
        self.checkpoint_write_seconds = Histogram(
            "dracpu_checkpoint_write_duration_seconds",
            "Time of one durable checkpoint write (write, fsync, rename, directory fsync).",
            buckets=_FAST_BUCKETS,
            registry=reg,
        )
        self.group_restarts = Counter(
            "dracpu_supervised_group_restarts",
            "Restarts of the supervised task group after a subtask failed, by reason.",
            ["reason"],
            registry=reg,
        )
        self.fallback_active = Gauge(
            "dracpu_cgroup_fallback_active",
            "1 while enforcement runs through the cgroup fallback (NRI unavailable), else 0.",
            registry=reg,
        )

    def watch_allocation(self, read: Callable[[], AllocationCounts]) -> None:
        """Read the allocation gauges from ``read`` at every scrape (and only then).

        ``read`` must be cheap and must not raise; it runs in the scraping task.
        """
        self._allocated.set_function(lambda: read().allocated_cpus)
        self._available.set_function(lambda: read().available_cpus)
        self._reserved.set_function(lambda: read().reserved_cpus)
        self._active.set_function(lambda: read().active_claims)

    def watch_slice_writes(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Read ``dracpu_resourceslice_writes_total{verb}`` from ``read`` at every scrape (the
        publisher already counts its writes; nothing is recorded between scrapes)."""
        self._slice_writes.read = read

    def watch_fallback(self, read: Callable[[], bool]) -> None:
        """Read ``dracpu_cgroup_fallback_active`` from ``read`` at every scrape."""
        self.fallback_active.set_function(lambda: 1.0 if read() else 0.0)

    def record_prepare(self, result: Result, seconds: float, cpus: int | None = None) -> None:
        """One claim's prepare finished; ``cpus`` is set for a newly successful allocation."""
        self.prepare_claims.labels(result=result.value).inc()
        self.prepare_duration.observe(seconds)
        if cpus is not None and result is Result.SUCCESS:
            self.claim_allocated_cpus.observe(cpus)

    def record_unprepare(self, result: Result) -> None:
        """One claim's unprepare finished."""
        self.unprepare_claims.labels(result=result.value).inc()

    def render(self) -> bytes:
        """The text exposition of every series (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


class _SliceWrites(Collector):
    """``dracpu_resourceslice_writes_total{verb}`` read from a callback at scrape time."""

    def __init__(self) -> None:
        self.read: Callable[[], Mapping[str, int]] = dict

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "dracpu_resourceslice_writes", _SLICE_WRITES_HELP, labels=["verb"]
        )

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "dracpu_resourceslice_writes", _SLICE_WRITES_HELP, labels=["verb"]
        )
        counts = self.read()
        for verb in ("create", "update", "delete"):
            family.add_metric([verb], float(counts.get(verb, 0)))
        yield family


_SLICE_WRITES_HELP = "ResourceSlice writes to the API server, by verb (create, update, delete)."
