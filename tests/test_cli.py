"""``dracpu inspect``: runs on every capture and on this machine; bad flags exit 2 in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dracpu.cli import main
from tests.support.captures import CAPTURE_NAMES


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def root(shared_dir: Path, machine: str) -> str:
    return str(shared_dir / "fixtures" / "sysfs" / machine / "sys")


@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_inspect_every_capture(
    shared_dir: Path, machine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = root(shared_dir, machine)
    code, out, _ = run(["inspect", "--sysfs-root", sysfs, "topology"], capsys)
    assert code == 0
    topo = yaml.safe_load(out)
    assert topo["counts"]["cpus"] == len(topo["cpuDetails"]) > 0
    # Every capture's CPU nodes have memory of their own.
    assert all(n["localMemory"] == n["id"] for n in topo["numaNodes"] if n["cpus"])

    # The default is upstream's: grouped, one consumable device per NUMA node with CPUs.
    code, out, _ = run(["inspect", "--sysfs-root", sysfs, "--node-name", "n1", "slices"], capsys)
    assert code == 0
    slices = list(yaml.safe_load_all(out))
    assert all(s["kind"] == "ResourceSlice" and s["spec"]["driver"] == "dra.cpu" for s in slices)
    devices = [d for s in slices for d in s["spec"]["devices"]]
    with_cpus = [n for n in topo["numaNodes"] if n["cpus"]] or [{"id": 0}]
    assert [d["name"] for d in devices] == [f"cpudevnuma{n['id']:03d}" for n in with_cpus]
    assert sum(int(d["capacity"]["dra.cpu/cpu"]["value"]) for d in devices) == len(
        topo["cpuDetails"]
    )
    explicit = ["--cpu-device-mode", "grouped", "--group-by", "numanode"]
    code, same, _ = run(
        ["inspect", "--sysfs-root", sysfs, *explicit, "--node-name", "n1", "slices"], capsys
    )
    assert code == 0
    assert same == out

    individual = ["--cpu-device-mode", "individual", "--node-name", "n1", "slices"]
    code, out, _ = run(["inspect", "--sysfs-root", sysfs, *individual], capsys)
    assert code == 0
    slices = list(yaml.safe_load_all(out))
    assert sum(len(s["spec"]["devices"]) for s in slices) == topo["counts"]["cpus"]

    code, out, _ = run(["inspect", "--sysfs-root", sysfs, "allocate", "2"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["count"] == 2


def test_inspect_grouped_slices_and_options(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = root(shared_dir, "server")
    code, out, _ = run(
        [
            "inspect",
            "--sysfs-root",
            sysfs,
            "--reserved-cpus",
            "0,56",
            "--cpu-device-mode",
            "grouped",
            "--group-by",
            "socket",
            "--node-name",
            "w",
            "slices",
        ],
        capsys,
    )
    assert code == 0
    (obj,) = yaml.safe_load_all(out)
    assert [d["name"] for d in obj["spec"]["devices"]] == ["cpudevsocket000", "cpudevsocket001"]
    assert obj["spec"]["devices"][0]["capacity"]["dra.cpu/cpu"]["value"] == "54"


def test_inspect_allocate_with_free_set(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = root(shared_dir, "2-socket-4-node-40-core")
    args = ["inspect", "--sysfs-root", sysfs, "--reserved-cpus", "0,40"]
    code, out, _ = run([*args, "allocate", "4", "--free", "0-3,40-43", "--full-pcpus-only"], capsys)
    assert code == 0
    assert yaml.safe_load(out) == {
        "cpus": "1-2,41-42",
        "count": 4,
        "sockets": [0],
        "numaNodes": [0],
        "l3Groups": [0],
        "cores": 2,
        "wholeCores": 2,
    }


def test_inspect_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inspect", "topology"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["counts"]["cpus"] >= 1
    code, out, err = run(["inspect", "--node-name", "here", "slices"], capsys)
    assert code == 0, err
    assert next(yaml.safe_load_all(out))["spec"]["nodeName"] == "here"


BAD_FLAGS = [
    (["--reserved-cpus", "0-3,x", "topology"], "'x'"),
    (["--reserved-cpus", "3-0", "topology"], "'3-0'"),
    (["--reserved-cpus", "500", "topology"], "500"),
    (["--sysfs-root", "/nonexistent-sysfs", "topology"], "/nonexistent-sysfs"),
    (["--cpu-device-mode", "bogus", "slices"], "bogus"),
    (["allocate", "0"], "'0'"),
    (["allocate", "two"], "'two'"),
    (["allocate", "2", "--free", "0-999"], "--free"),
]


@pytest.mark.parametrize(("args", "named"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line_naming_the_value(
    shared_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    if args[0] != "--sysfs-root":
        args = ["--sysfs-root", root(shared_dir, "desktop"), *args]
    code, out, err = run(["inspect", *args], capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert named in err


def test_impossible_allocation_exits_1(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = root(shared_dir, "desktop")
    code, _, err = run(
        ["inspect", "--sysfs-root", sysfs, "allocate", "3", "--full-pcpus-only"], capsys
    )
    assert code == 1
    assert "not a multiple of the 2 threads per core" in err


def test_console_script_and_broken_pipe(shared_dir: Path) -> None:
    """The installed entry point runs, and a reader closing early is not an error."""
    sysfs = root(shared_dir, "server")
    proc = subprocess.run(
        f"{sys.executable} -m dracpu inspect --sysfs-root {sysfs} topology | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.startswith("cpus:")
    assert "Traceback" not in proc.stderr
