"""Operating dracpu: the HTTP endpoint (health, readiness, metrics, status) and metrics."""

from dracpu.ops.http import DEFAULT_BIND_ADDRESS, Endpoint, HealthPart, serve_endpoint
from dracpu.ops.metrics import AllocationCounts, DriverMetrics, Result

__all__ = [
    "DEFAULT_BIND_ADDRESS",
    "AllocationCounts",
    "DriverMetrics",
    "Endpoint",
    "HealthPart",
    "Result",
    "serve_endpoint",
]
