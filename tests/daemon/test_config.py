"""`dracpu run` configuration: upstream keys and strictness; precedence flags > file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dracpu.core.allocator import Strategy
from dracpu.core.cpuset import CpuSet
from dracpu.core.slices import DeviceMode, GroupBy
from dracpu.daemon.config import ConfigError, RunConfig, load_file, node_name, resolve


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "driver-config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_upstream() -> None:
    cfg = resolve({}, None)
    assert cfg.cpu_device_mode is DeviceMode.GROUPED
    assert cfg.group_by is GroupBy.NUMANODE
    assert cfg.bind_address == ":8080"
    assert cfg.kubelet_root_dir == Path("/var/lib/kubelet")
    assert cfg.reserved_cpus == CpuSet()


def test_precedence_flags_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "apiVersion: v1alpha1\ncpuDeviceMode: individual\nreservedCPUs: '0-1'\nstrategy: spread\n",
    )
    cfg = resolve({"reserved_cpus": "0,4"}, path)
    assert cfg.cpu_device_mode is DeviceMode.INDIVIDUAL  # file
    assert cfg.reserved_cpus == CpuSet.parse("0,4")  # flag beats file
    assert cfg.strategy is Strategy.SPREAD
    assert cfg.group_by is GroupBy.NUMANODE  # default


def test_log_line_is_one_json_line() -> None:
    cfg = RunConfig(reserved_cpus=CpuSet.parse("0-1"))
    line = cfg.log_line()
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["reservedCPUs"] == "0-1"
    assert doc["cpuDeviceMode"] == "grouped"
    assert doc["exposePCIeRoots"] is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groupBy: socket\ngroupBy: numanode\n", "duplicate key 'groupBy' (line 2)"),
        ("grupBy: socket\n", "unknown key 'grupBy'"),
        ("CPUDeviceMode: grouped\n", "key 'CPUDeviceMode' is spelled differently"),
        ("groupby: socket\nReservedCpus: '1'\n", "'ReservedCpus' is spelled differently"),
        ("bindAddress: ':9'\n", "key 'bindAddress' is not configurable via the config file"),
        ("kubeletRootDir: /x\n", "'kubeletRootDir' is not configurable"),
        ("exposePCIeRoots: true\n", "'exposePCIeRoots' is not configurable"),
        ("apiVersion: v2\n", "unsupported apiVersion 'v2'"),
        ("cpuDeviceMode: whole\n", "key 'cpuDeviceMode': invalid value 'whole'"),
        ("reservedCPUs: '3-1'\n", "invalid range '3-1'"),
        ("fullPCPUsOnly: 'yes'\n", "key 'fullPCPUsOnly': must be true or false"),
        ("cdiDir: relative\n", "key 'cdiDir': must be an absolute path"),
        ("sysfsOverlay: /o.yaml\n", "'sysfsOverlay' is not supported"),
        ("- a\n", "must hold a mapping"),
        ("a: [\n", "cannot parse config file"),
    ],
    ids=[
        "duplicate",
        "unknown",
        "case-variant",
        "two-case-variants",
        "bindAddress",
        "kubeletRootDir",
        "exposePCIeRoots",
        "apiVersion",
        "bad-enum",
        "bad-cpuset",
        "bad-bool",
        "relative-path",
        "sysfsOverlay",
        "not-a-mapping",
        "bad-yaml",
    ],
)
def test_strict_file_errors_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_case_variants_are_all_named_sorted(tmp_path: Path) -> None:
    path = write(tmp_path, "groupby: socket\nReservedCpus: '1'\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    text = str(info.value)
    assert text.index("'ReservedCpus'") < text.index("'groupby'")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_file(tmp_path / "absent.yaml")


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert resolve({}, write(tmp_path, "")) == RunConfig()


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="flag --group-by: invalid value 'rack'"):
        resolve({"group_by": "rack"}, None)


def test_node_name() -> None:
    assert node_name(RunConfig(hostname_override=" Node-1 ")) == "node-1"
    assert node_name(RunConfig(), hostname=lambda: "HOST") == "host"
    with pytest.raises(ConfigError, match="empty node name"):
        node_name(RunConfig(), hostname=lambda: "")


def test_flag_strings_are_parsed_like_upstream_flags() -> None:
    cfg = resolve({"release_grace_period": "2.5", "full_pcpus_only": True}, None)
    assert cfg.release_grace_period == 2.5
    assert cfg.full_pcpus_only is True
    with pytest.raises(ConfigError, match="--release-grace-period"):
        resolve({"release_grace_period": "soon"}, None)


def test_cli_run_flags_reach_the_config(tmp_path: Path) -> None:
    from dracpu.cli import build_parser

    path = write(tmp_path, "groupBy: socket\nfullPCPUsOnly: true\n")
    argv = ["run", "--config", str(path), "--full-pcpus-only=false", "--reserved-cpus", "0"]
    args = build_parser().parse_args([*argv, "-v", "4", "--log-format", "json"])
    assert (args.verbosity, args.log_format) == (4, "json")
    logging_flags = ("verbosity", "log_format")
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", *logging_flags)}
    cfg = resolve(flags, args.config)
    assert cfg.group_by is GroupBy.SOCKET
    assert cfg.full_pcpus_only is False
    assert cfg.reserved_cpus == CpuSet.parse("0")
