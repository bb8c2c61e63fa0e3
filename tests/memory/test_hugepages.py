"""``dracpu hugepages provision``: upstream's HugePageProvision format, the per-node plan, the
report of what the kernel gave (on tmpfs trees, an in-memory stingy kernel, and this machine)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml

from dracpu.cli import main
from dracpu.core.hugepage_provision import (
    HugePageProvision,
    PageRequest,
    ProvisionTarget,
    parse_page_size,
    parse_provision,
    plan_provision,
)
from dracpu.core.memory import GIB, MIB
from dracpu.errors import InvalidValueError
from dracpu.hugepages import HugePageSysfs, ProvisionError, apply_targets
from tests.support.sysfs_tree import SysfsSpec, write_tree

NODE = "devices/system/node"
UPSTREAM_2M = """\
kind: HugePageProvision
metadata:
  name: balanced-runtime
spec:
  pages:
  - size: "2M"
    count: 4096
"""


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2M", 2 * MIB),
        ("2Mi", 2 * MIB),
        ("2m", 2 * MIB),
        ("1G", GIB),
        ("1Gi", GIB),
        ("1g", GIB),
        ("64Ki", 64 * 1024),
        ("2048kB", 2 * MIB),
    ],
)
def test_page_sizes(text: str, size: int) -> None:
    assert parse_page_size(text) == size


@pytest.mark.parametrize("text", ["", "2", "2T", "two", "2 M", None])
def test_bad_page_sizes(text: object) -> None:
    with pytest.raises(InvalidValueError, match="invalid hugepage size"):
        parse_page_size(text)


def test_upstream_example_and_split() -> None:
    provision = parse_provision(yaml.safe_load(UPSTREAM_2M), origin="f.yaml")
    assert provision == HugePageProvision("balanced-runtime", (PageRequest(2 * MIB, 4096),))
    # 4096 over 3 nodes: 1365 each, the remainder 1 on the lowest node.
    assert plan_provision(provision, [2, 0, 1]) == [
        ProvisionTarget(0, 2 * MIB, 1366),
        ProvisionTarget(1, 2 * MIB, 1365),
        ProvisionTarget(2, 2 * MIB, 1365),
    ]


def test_node_is_honoured_on_multi_node_machines() -> None:
    doc = {"spec": {"pages": [{"size": "1G", "count": 2, "node": 1}, {"size": "2M", "count": 3}]}}
    assert plan_provision(parse_provision(doc, origin="f"), [0, 1]) == [
        ProvisionTarget(1, GIB, 2),
        ProvisionTarget(0, 2 * MIB, 2),
        ProvisionTarget(1, 2 * MIB, 1),
    ]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "not a HugePageProvision mapping"),
        ({"kind": "Pod"}, "kind 'Pod'"),
        ({"spec": {"pages": {"size": "2M"}}}, "spec.pages must be a list"),
        ({"spec": {"pages": [{"size": "2M", "count": -1}]}}, "count -1"),
        ({"spec": {"pages": [{"size": "2M", "count": "8"}]}}, "count '8'"),
        ({"spec": {"pages": [{"size": "2M", "count": 1, "node": -2}]}}, "node -2"),
        ({"spec": {"pages": [{"size": "2M", "count": 1, "nodes": 1}]}}, "unknown fields"),
        ({"spec": {"pages": [{"size": "3X", "count": 1}]}}, "spec.pages[0].size"),
    ],
    ids=["list", "kind", "pages", "negative", "string", "node", "typo", "size"],
)
def test_bad_documents_name_the_field(doc: object, problem: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        parse_provision(doc, origin="f.yaml")
    assert problem in str(info.value)
    assert "f.yaml" in str(info.value)


def test_plan_errors() -> None:
    twice = parse_provision(
        {"spec": {"pages": [{"size": "2M", "count": 1, "node": 0}, {"size": "2Mi", "count": 2}]}},
        origin="f",
    )
    with pytest.raises(InvalidValueError, match=r"2Mi on node 0 is already set by spec.pages\[0\]"):
        plan_provision(twice, [0, 1])
    absent = parse_provision(
        {"spec": {"pages": [{"size": "2M", "count": 1, "node": 7}]}}, origin="f"
    )
    with pytest.raises(
        InvalidValueError, match=r"node 7 is not a NUMA node with memory \(nodes: \[0, 1\]\)"
    ):
        plan_provision(absent, [0, 1])


class StingyKernel:
    """An in-memory pool set that gives at most ``limit`` pages per pool, like a kernel short
    of contiguous memory, and refuses writes to pools in ``refuse``."""

    def __init__(self, pools: dict[tuple[int, int], int], limit: int, refuse: set[tuple[int, int]]):
        self.pools = pools
        self.limit = limit
        self.refuse = refuse

    def read(self, node: int, page_size: int) -> int:
        if (node, page_size) not in self.pools:
            raise ProvisionError("no such pool", path=f"node{node}/{page_size}")
        return self.pools[(node, page_size)]

    def write(self, node: int, page_size: int, count: int) -> None:
        if (node, page_size) in self.refuse:
            raise ProvisionError("cannot write (Invalid argument)", path=f"node{node}/{page_size}")
        self.pools[(node, page_size)] = min(count, self.limit)


def test_report_says_what_the_kernel_gave() -> None:
    kernel = StingyKernel(
        {(0, 2 * MIB): 0, (1, 2 * MIB): 5, (0, GIB): 0}, limit=10, refuse={(0, GIB)}
    )
    lines: list[str] = []
    outcomes = apply_targets(
        kernel,
        [
            ProvisionTarget(0, 2 * MIB, 64),
            ProvisionTarget(1, 2 * MIB, 5),
            ProvisionTarget(0, GIB, 1),
            ProvisionTarget(1, GIB, 1),
        ],
        progress=lines.append,
    )
    assert [(o.before, o.after, o.met) for o in outcomes] == [
        (0, 10, False),
        (5, 5, True),
        (0, 0, False),
        (0, 0, False),
    ]
    assert outcomes[0].describe() == "node 0 2Mi: asked 64, had 0, the kernel gave 10"
    assert "Invalid argument" in (outcomes[2].error or "")
    assert "no such pool" in (outcomes[3].error or "")
    # Progress for each write; the pool already at its count is not written.
    assert lines == ["node 0 2Mi: 0 -> 64 pages", "node 0 1Gi: 0 -> 1 pages"]


def pool_tree(base: Path) -> Path:
    extra: dict[str, str] = {}
    for node in (0, 1):
        for kb in (2048, 1048576):
            d = f"{NODE}/node{node}/hugepages/hugepages-{kb}kB"
            extra |= {f"{d}/nr_hugepages": "0", f"{d}/free_hugepages": "0"}
    return write_tree(base, SysfsSpec(sockets=2, cores_per_numa=1, extra_files=extra))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_on_a_tmpfs_tree(sysfs_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = pool_tree(sysfs_tmp)
    f = sysfs_tmp / "hp.yaml"
    f.write_text(UPSTREAM_2M.replace("4096", "7") + "  - size: 1G\n    count: 1\n    node: 1\n")
    code, out, _ = run(
        ["hugepages", "--sysfs-root", str(root), "provision", "--dry-run", str(f)], capsys
    )
    assert code == 0
    assert (root / NODE / "node0/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "0\n"
    code, out, err = run(["hugepages", "--sysfs-root", str(root), "provision", str(f)], capsys)
    assert code == 0, err
    report = yaml.safe_load(out)
    assert report["provision"] == "balanced-runtime"
    assert report["pages"] == [
        {"node": 0, "size": "2Mi", "requested": 4, "before": 0, "got": 4},
        {"node": 1, "size": "2Mi", "requested": 3, "before": 0, "got": 3},
        {"node": 1, "size": "1Gi", "requested": 1, "before": 0, "got": 1},
    ]
    pools = HugePageSysfs(root)
    assert (pools.read(0, 2 * MIB), pools.read(1, 2 * MIB), pools.read(1, GIB)) == (4, 3, 1)
    # inspect memory now sees the pools and publishes hugepage devices.
    code, out, _ = run(
        ["inspect", "--sysfs-root", str(root), "--node-name", "n1", "memory"], capsys
    )
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    names = [
        d["name"]
        for doc in docs
        if doc.get("kind") == "ResourceSlice"
        for d in doc["spec"]["devices"]
    ]
    assert names == [
        "memory-numa000",
        "memory-numa001",
        "hugepages-2mi-numa000",
        "hugepages-2mi-numa001",
        "hugepages-1gi-numa001",
    ]
    classes = [doc["metadata"]["name"] for doc in docs if doc.get("kind") == "DeviceClass"]
    assert classes == ["dra.memory", "dra.hugepages-2m", "dra.hugepages-1g"]


def test_cli_errors(sysfs_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = pool_tree(sysfs_tmp)
    bad = sysfs_tmp / "bad.yaml"
    bad.write_text("kind: HugePageProvision\nspec:\n  pages:\n  - size: 3X\n    count: 1\n")
    code, _, err = run(["hugepages", "--sysfs-root", str(root), "provision", str(bad)], capsys)
    assert code == 2
    assert (
        err.strip() == f"dracpu: error: {bad}: spec.pages[0].size: invalid hugepage size '3X' "
        "(expected e.g. 2M, 2Mi, 1G)"
    )
    code, _, err = run(["hugepages", "provision", str(sysfs_tmp / "absent.yaml")], capsys)
    assert code == 2
    assert "No such file" in err
    unsupported = sysfs_tmp / "u.yaml"
    unsupported.write_text("spec:\n  pages:\n  - size: 32M\n    count: 1\n")
    code, out, err = run(
        ["hugepages", "--sysfs-root", str(root), "provision", str(unsupported)], capsys
    )
    assert code == 1
    assert "no 32Mi hugepage pool on node 0" in yaml.safe_load(out)["pages"][0]["error"]
    assert "node 0 32Mi: asked 1" in err


LIVE = Path("/sys/devices/system/node/node0/hugepages")


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(LIVE / "hugepages-2048kB" / "nr_hugepages", os.W_OK),
    reason="needs root and writable per-node hugepage pools in /sys",
)
def test_live_small_counts_restored(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pools = HugePageSysfs(Path("/sys"))
    sizes = [s for s in (2 * MIB, GIB) if (LIVE / f"hugepages-{s // 1024}kB").is_dir()]
    old = {s: pools.read(0, s) for s in sizes}
    f = tmp_path / "hp.yaml"
    pages = [{"size": "2M", "count": old[2 * MIB] + 4, "node": 0}]
    if GIB in old:
        pages.append({"size": "1G", "count": old[GIB] + 1, "node": 0})
    f.write_text(yaml.safe_dump({"kind": "HugePageProvision", "spec": {"pages": pages}}))
    try:
        code, out, err = run(["hugepages", "provision", str(f)], capsys)
        report = yaml.safe_load(io.StringIO(out))["pages"]
        # What is reported is what the kernel holds; 2 MiB pages this small always fit.
        for row, size in zip(report, sizes, strict=True):
            assert row["got"] == pools.read(0, size)
            assert row["before"] == old[size]
        assert report[0]["got"] == old[2 * MIB] + 4
        all_met = all(r["got"] == r["requested"] for r in report)
        assert code == (0 if all_met else 1), err
    finally:
        for size, count in old.items():
            pools.write(0, size, count)
    assert {s: pools.read(0, s) for s in sizes} == old
