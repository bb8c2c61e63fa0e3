"""Memory discovery and ``dra.memory`` slices on every real capture in ``../shared``.

Expected numbers are read by hand from each capture's ``node*/meminfo`` (``MemTotal``, kB) and
``node*/hugepages/hugepages-*kB/nr_hugepages``; the ryzen capture has no per-node meminfo and
falls back to its ``proc/meminfo``.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from dracpu.cli import main
from dracpu.core.memory import GIB, MIB, MemoryTopology
from dracpu.core.memory_slices import (
    MemorySliceOptions,
    build_memory_slice_specs,
    device_classes,
    memory_devices,
)
from dracpu.core.slice_plan import plan_slices
from dracpu.sysfs_memory import read_memory
from tests.core.test_slices import SCHEMA_VERSIONS, check_limits, validator
from tests.support.captures import CAPTURE_NAMES

KIB = 1024

# capture → {NUMA node: MemTotal kB}
MEMTOTAL_KB = {
    "desktop": {0: 65621548},
    "intel-hybrid-16cpu": {0: 40645580},
    "server": {0: 32372996, 1: 33023416, 2: 33023424, 3: 33018848, 4: 130023424, 5: 130023424},
    "2-socket-4-node-40-core": {0: 48005604, 1: 49507804, 2: 49540688, 3: 49539172},
    "ghw-intel-xeon-L5640-2numa": {0: 32980312, 1: 32940968},
    "ghw-amd-ryzen-1600": {0: 32777916},  # proc/meminfo: the capture has no node meminfo
    "ghw-intel-i7-1270P-hybrid": {0: 32542668},
}
# capture → 2 MiB pages per node (every other capture has none provisioned, 1 GiB nowhere)
HUGEPAGES_2M = {"2-socket-4-node-40-core": {0: 2560, 1: 2560, 2: 2560, 3: 2560}}


def capture(shared_dir: Path, name: str) -> MemoryTopology:
    return read_memory(shared_dir / "fixtures" / "sysfs" / name / "sys", page_size=4096)


@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_discovery_matches_meminfo_and_pools(shared_dir: Path, machine: str) -> None:
    topo = capture(shared_dir, machine)
    assert [n.id for n in topo.nodes] == sorted(MEMTOTAL_KB[machine])
    pages = HUGEPAGES_2M.get(machine, {})
    for node in topo.nodes:
        assert node.total_bytes == MEMTOTAL_KB[machine][node.id] * KIB
        two_meg = node.pool(2 * MIB)
        assert (two_meg.total if two_meg else 0) == pages.get(node.id, 0)
        one_gig = node.pool(GIB)
        assert one_gig is None or one_gig.total == 0
        # Hugepages are subtracted from ordinary memory: nothing is counted twice.
        assert node.memory_bytes == node.total_bytes - pages.get(node.id, 0) * 2 * MIB


def test_server_memory_only_nodes(shared_dir: Path) -> None:
    topo = capture(shared_dir, "server")
    assert [n.id for n in topo.nodes if n.memory_only] == [4, 5]
    devices = {d.name: d for d in memory_devices(topo, MemorySliceOptions("n1"))}
    assert sorted(devices) == [f"memory-numa00{i}" for i in range(6)]
    assert devices["memory-numa004"].capacity == 130023424 * KIB
    assert devices["memory-numa004"].numa == 4


def test_two_socket_hugepage_devices(shared_dir: Path) -> None:
    topo = capture(shared_dir, "2-socket-4-node-40-core")
    specs = build_memory_slice_specs(topo, MemorySliceOptions("n1"))
    # One slice per resource: memory, then hugepages-2Mi; no 1 GiB pages provisioned.
    assert [[d["name"] for d in s["devices"]] for s in specs] == [
        [f"memory-numa00{i}" for i in range(4)],
        [f"hugepages-2mi-numa00{i}" for i in range(4)],
    ]
    memory, huge = specs[0]["devices"][0], specs[1]["devices"][1]
    # 48005604 kB - 2560 x 2048 kB = 42762724 kB
    assert memory["capacity"] == {
        "size": {
            "value": "42762724Ki",
            "requestPolicy": {
                "default": "1Mi",
                "validRange": {"min": "4Ki", "step": "4Ki", "max": "42762724Ki"},
            },
        }
    }
    assert huge["capacity"]["size"] == {
        "value": "5Gi",
        "requestPolicy": {
            "default": "2Mi",
            "validRange": {"min": "2Mi", "step": "2Mi", "max": "5Gi"},
        },
    }
    assert huge["attributes"] == {
        "dra.cpu/numaNodeID": {"int": 1},
        "dra.net/numaNode": {"int": 1},
        "resource.kubernetes.io/hugeTLB": {"bool": True},
        "resource.kubernetes.io/numaNode": {"int": 1},
        "resource.kubernetes.io/pageSize": {"string": "2Mi"},
    }
    assert memory["allowMultipleAllocations"] is True
    assert all(s["pool"] == {"name": "n1", "generation": 1, "resourceSliceCount": 2} for s in specs)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_every_capture_validates(shared_dir: Path, machine: str, version: str) -> None:
    topo = capture(shared_dir, machine)
    specs = build_memory_slice_specs(topo, MemorySliceOptions("node-a"))
    plan = plan_slices(specs, [], driver="dra.memory", node="node-a", owner_uid="1234")
    check = validator(shared_dir, version)
    names: set[str] = set()
    for write in plan.creates:
        errors = sorted(check.iter_errors(write.body), key=str)
        assert not errors, errors[0].message
        check_limits(write.body)
        for device in write.body["spec"]["devices"]:
            assert device["name"] not in names
            names.add(device["name"])
    assert len(names) == len(memory_devices(topo, MemorySliceOptions("node-a"))) > 0
    # Names depend on the topology only: reading again gives the same slices.
    assert (
        build_memory_slice_specs(capture(shared_dir, machine), MemorySliceOptions("node-a"))
        == specs
    )


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_device_classes_validate_and_match_upstream(shared_dir: Path, version: str) -> None:
    defs = validator(shared_dir, version).schema["$defs"]
    check = jsonschema.Draft202012Validator(
        {"$defs": defs, "$ref": "#/$defs/io.k8s.api.resource.v1.DeviceClass"}
    )
    # The machine itself supports 2 MiB and 1 GiB pages even where none are provisioned.
    classes = device_classes(
        MemoryTopology(nodes=(), page_size=4096, hugepage_sizes=(2 * MIB, GIB))
    )
    assert [c["metadata"]["name"] for c in classes] == [
        "dra.memory",
        "dra.hugepages-2m",
        "dra.hugepages-1g",
    ]
    for c in classes:
        errors = sorted(check.iter_errors(c), key=str)
        assert not errors, errors[0].message
    assert classes[1]["spec"]["selectors"][0]["cel"]["expression"] == (
        'device.driver == "dra.memory" && device.attributes["resource.kubernetes.io"].pageSize'
        ' == "2Mi" && device.attributes["resource.kubernetes.io"].hugeTLB == true'
    )
    assert 'pageSize == "4Ki"' in classes[0]["spec"]["selectors"][0]["cel"]["expression"]
    assert "hugeTLB == false" in classes[0]["spec"]["selectors"][0]["cel"]["expression"]


def test_reserved_memory_is_left_out(shared_dir: Path) -> None:
    topo = capture(shared_dir, "server")
    options = MemorySliceOptions("n1", reserved_memory={0: GIB, 4: 130023424 * KIB})
    devices = {d.name: d.capacity for d in memory_devices(topo, options)}
    assert devices["memory-numa000"] == 32372996 * KIB - GIB
    assert "memory-numa004" not in devices  # all of it reserved: nothing to offer


@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_inspect_memory_every_capture(
    shared_dir: Path, machine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = str(shared_dir / "fixtures" / "sysfs" / machine / "sys")
    assert main(["inspect", "--sysfs-root", sysfs, "--node-name", "n1", "memory"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [n["id"] for n in docs[0]["numaNodes"]] == sorted(MEMTOTAL_KB[machine])
    slices = [d for d in docs if d.get("kind") == "ResourceSlice"]
    assert all(s["spec"]["driver"] == "dra.memory" for s in slices)
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert names[: len(MEMTOTAL_KB[machine])] == [
        f"memory-numa{n:03d}" for n in MEMTOTAL_KB[machine]
    ]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_docs_aligned_claim_validates(shared_dir: Path, version: str) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "memory.md").read_text()
    block = text.split("## CPU and memory on one NUMA node", 1)[1].split("```yaml", 1)[1]
    template = next(yaml.safe_load_all(block.split("```", 1)[0]))
    defs = validator(shared_dir, version).schema["$defs"]
    check = jsonschema.Draft202012Validator(
        {"$defs": defs, "$ref": "#/$defs/io.k8s.api.resource.v1.ResourceClaimTemplate"}
    )
    errors = sorted(check.iter_errors(template), key=str)
    assert not errors, errors[0].message
    spec = template["spec"]["spec"]["devices"]
    assert spec["constraints"] == [
        {"requests": ["cpus", "mem", "hp"], "matchAttribute": "resource.kubernetes.io/numaNode"}
    ]
    # The classes it names are the ones dracpu publishes.
    names = {
        c["metadata"]["name"]
        for c in device_classes(capture(shared_dir, "2-socket-4-node-40-core"))
    }
    asked = {r["exactly"]["deviceClassName"] for r in spec["requests"]}
    assert asked - {"dra.cpu"} <= names
