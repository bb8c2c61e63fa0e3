"""The CDI contract shared with upstream dra.cpu: env name/format, spec shape, env parsing."""

from __future__ import annotations

import pytest

from dracpu.core.cdi import (
    CpusetEnvError,
    cdi_device_id,
    cdi_spec,
    cdi_spec_file_name,
    env_entry,
    env_name,
    parse_env,
)
from dracpu.core.cpuset import CpuSet

UID = "0b6c5a4e-7a0e-4d0c-9a55-2a1f3c9e8d11"


def test_upstream_format() -> None:
    # upstream pkg/driver/dra_hooks.go: fmt.Sprintf("%s_%s=%s", "DRA_CPUSET", claim.UID, cpuset)
    assert env_name(UID) == f"DRA_CPUSET_{UID}"
    assert env_entry(UID, CpuSet.parse("0-2,14-15")) == f"DRA_CPUSET_{UID}=0-2,14-15"
    assert cdi_device_id(UID) == f"dra.k8s.io/cpu=claim-{UID}"
    assert cdi_spec_file_name(UID) == f"dra.k8s.io-cpu_claim-{UID}.json"
    assert cdi_spec(UID, CpuSet.parse("3")) == {
        "cdiVersion": "0.8.0",
        "kind": "dra.k8s.io/cpu",
        "devices": [{"name": f"claim-{UID}", "containerEdits": {"env": [f"DRA_CPUSET_{UID}=3"]}}],
    }


def test_parse_round_trips_and_ignores_other_env() -> None:
    env = ["PATH=/bin", env_entry("a", CpuSet.parse("1-3")), env_entry("b", CpuSet.parse("8"))]
    env.append("DRA_CPUSETX=1")  # no "_" separator: skipped, as upstream does
    assert parse_env(env) == {"a": CpuSet.parse("1-3"), "b": CpuSet.parse("8")}


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("DRA_CPUSET_a", "no '='"),
        ("DRA_CPUSET_=1", "no claim UID"),
        ("DRA_CPUSET_a=x", "DRA_CPUSET_a"),
        ("DRA_CPUSET_a=", "empty cpu list"),
        ("DRA_CPUSET_a=3-1", "invalid range"),
    ],
)
def test_malformed_entries_are_named(entry: str, reason: str) -> None:
    with pytest.raises(CpusetEnvError, match=reason) as info:
        parse_env([entry], origin="container c1")
    assert str(info.value).startswith("container c1: ")


def test_same_uid_twice_with_different_cpus() -> None:
    with pytest.raises(CpusetEnvError, match="given twice"):
        parse_env(["DRA_CPUSET_a=1", "DRA_CPUSET_a=2"])
    assert parse_env(["DRA_CPUSET_a=1", "DRA_CPUSET_a=1"]) == {"a": CpuSet.of([1])}
