"""The HTTP endpoint over a real TCP socket: health, readiness, metrics, status, errors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest
import trio

from dracpu.errors import InvalidValueError
from dracpu.ops import AllocationCounts, DriverMetrics, Endpoint, HealthPart, Result
from dracpu.ops.http import parse_bind_address, serve_endpoint


class Sources:
    """Mutable health and status the tests flip between requests."""

    def __init__(self) -> None:
        self.parts: list[HealthPart] = [HealthPart("kubelet-registration", True)]
        self.status_doc: dict[str, Any] = {"claims": []}
        self.broken = False

    def health(self) -> Sequence[HealthPart]:
        return self.parts

    def status(self) -> Mapping[str, Any]:
        if self.broken:
            raise RuntimeError("state unavailable")
        return self.status_doc


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[Sources, DriverMetrics, str]:
    sources = Sources()
    metrics = DriverMetrics()
    endpoint = Endpoint(health=sources.health, metrics=metrics, status=sources.status)
    addresses = await nursery.start(serve_endpoint, endpoint, "127.0.0.1:0")
    return sources, metrics, addresses[0]


async def test_healthz_names_each_failing_part(served: tuple[Sources, DriverMetrics, str]) -> None:
    sources, _, base = served
    async with httpx.AsyncClient(base_url=base) as client:
        ok = await client.get("/healthz")
        assert (ok.status_code, ok.text) == (200, "ok\n")
        sources.parts = [
            HealthPart("kubelet-registration", False, "not registered"),
            HealthPart("slices", True),
            HealthPart("enforcement", False, "NRI not connected", for_readiness=False),
        ]
        bad = await client.get("/healthz")
        assert bad.status_code == 503
        assert bad.text == "kubelet-registration: not registered\nenforcement: NRI not connected\n"
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.text) == (503, "kubelet-registration: not registered\n")


async def test_metrics_carry_upstream_names(served: tuple[Sources, DriverMetrics, str]) -> None:
    _, metrics, base = served
    counts = AllocationCounts(allocated_cpus=6, available_cpus=10, reserved_cpus=2, active_claims=2)
    metrics.watch_allocation(lambda: counts)
    metrics.record_prepare(Result.SUCCESS, 0.002, cpus=4)
    metrics.record_prepare(Result.ERROR, 0.001)
    metrics.record_unprepare(Result.SUCCESS)
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        "dra_cpu_allocated_cpus 6.0",
        "dra_cpu_available_cpus 10.0",
        "dra_cpu_reserved_cpus 2.0",
        "dra_cpu_resource_claims_active 2.0",
        'dra_cpu_prepare_claims_total{result="success"} 1.0',
        'dra_cpu_prepare_claims_total{result="error"} 1.0',
        'dra_cpu_prepare_claims_total{result="unknown"} 0.0',
        'dra_cpu_unprepare_claims_total{result="success"} 1.0',
        "dra_cpu_prepare_claim_duration_seconds_count 2.0",
        'dra_cpu_claim_allocated_cpus_bucket{le="4.0"} 1.0',
        "dra_cpu_claim_allocated_cpus_count 1.0",
    ):
        assert line in text.splitlines(), line


async def test_status_json_and_errors(served: tuple[Sources, DriverMetrics, str]) -> None:
    sources, _, base = served
    sources.status_doc = {"claims": [{"uid": "u1", "cpus": "2-3"}], "sharedPool": "0-1,4-7"}
    async with httpx.AsyncClient(base_url=base) as client:
        status = await client.get("/status")
        assert status.headers["content-type"] == "application/json"
        assert json.loads(status.text) == sources.status_doc
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/healthz")).status_code == 405
        sources.broken = True
        broken = await client.get("/status")
        assert (broken.status_code, broken.text) == (500, "state unavailable\n")
        assert (await client.get("/healthz")).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("text", "want"),
    [(":8080", "0.0.0.0:8080"), ("127.0.0.1:9", "127.0.0.1:9"), ("[::1]:80", "[::1]:80")],
)
def test_bind_address_go_style(text: str, want: str) -> None:
    assert parse_bind_address(text) == want


@pytest.mark.parametrize("text", ["8080", ":0x50", "host:", ":70000"])
def test_bind_address_rejected_with_origin(text: str) -> None:
    with pytest.raises(InvalidValueError, match=r"^--bind-address: invalid address"):
        parse_bind_address(text)
