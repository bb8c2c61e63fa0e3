"""The Helm chart and the plain manifests: lint, drift, drop-in layout, RBAC, mounts, values."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dracpu.cli import build_parser
from dracpu.core.memory_slices import device_classes
from dracpu.sysfs_memory import read_memory
from tests.deploy.chart import CHART_DIR, MANIFESTS, REPO_ROOT, Chart, find


def test_helm_lint_strict(chart: Chart) -> None:
    done = chart.run("lint", "--strict", "--kube-version", "1.34.0", str(CHART_DIR))
    assert done.returncode == 0, done.stdout + done.stderr


def test_plain_manifests_are_the_charts_render() -> None:
    done = subprocess.run(
        [str(REPO_ROOT / "hack/manifests.sh"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def daemonset(objects: list[dict[str, Any]], name: str = "dracpu") -> dict[str, Any]:
    return find(objects, "DaemonSet", name)


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return daemonset(objects)["spec"]["template"]["spec"]["containers"][0]


def flags(objects: list[dict[str, Any]]) -> dict[str, str]:
    args = container(objects)["args"]
    for arg in args:
        assert re.fullmatch(r"--[a-z0-9-]+=.*", arg), f"not --flag=value: {arg}"
    return dict(arg[2:].split("=", 1) for arg in args)


def test_drop_in_layout_matches_upstream() -> None:
    """Names, namespace, selector and config wiring of dra-driver-cpu's install."""
    objects = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted(
        [
            ("ServiceAccount", "dracpu"),
            ("ConfigMap", "dracpu-config"),
            ("ClusterRole", "dracpu"),
            ("ClusterRoleBinding", "dracpu"),
            ("DaemonSet", "dracpu"),
            ("DeviceClass", "dra.cpu"),
            ("ValidatingAdmissionPolicy", "dracpu-claim-config"),
            ("ValidatingAdmissionPolicy", "dracpu-slice-node"),
            ("ValidatingAdmissionPolicyBinding", "dracpu-claim-config"),
            ("ValidatingAdmissionPolicyBinding", "dracpu-slice-node"),
        ]
    )
    ds = daemonset(objects)
    assert ds["metadata"]["namespace"] == "kube-system"
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "dracpu"}
    pod = ds["spec"]["template"]
    assert {"app": "dracpu", "k8s-app": "dracpu", "tier": "node"}.items() <= pod["metadata"][
        "labels"
    ].items()
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "dracpu"
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    c = spec["containers"][0]
    assert c["name"] == "dracpu"
    assert flags(objects)["config"] == "/etc/dracpu/config.yaml"
    config = yaml.safe_load(find(objects, "ConfigMap", "dracpu-config")["data"]["config.yaml"])
    assert config == {"apiVersion": "v1alpha1"}
    device_class = find(objects, "DeviceClass", "dra.cpu")
    assert device_class["spec"]["selectors"] == [
        {"cel": {"expression": 'device.driver == "dra.cpu"'}}
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}


def test_no_privilege_no_capability() -> None:
    objects = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    security = container(objects)["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in security["capabilities"]


def test_rbac_is_exactly_the_calls_dracpu_makes() -> None:
    objects = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): (sorted(r["verbs"]), r.get("resourceNames"))
        for r in find(objects, "ClusterRole", "dracpu")["rules"]
    }
    assert rules == {
        (("",), ("nodes",)): (["get"], None),
        (("resource.k8s.io",), ("resourceslices",)): (
            ["create", "delete", "list", "update", "watch"],
            None,
        ),
        (("resource.k8s.io",), ("resourceclaims",)): (["get", "list", "watch"], None),
        (("resource.k8s.io",), ("resourceclaims/status",)): (["patch", "update"], None),
        (("resource.k8s.io",), ("resourceclaims/driver",)): (
            ["associated-node:patch", "associated-node:update"],
            ["dra.cpu"],
        ),
    }
    binding = find(objects, "ClusterRoleBinding", "dracpu")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dracpu", "namespace": "kube-system"}
    ]


def mounts(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """mountPath -> (volume name, hostPath) for every hostPath volume."""
    spec = daemonset(objects)["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: (m["name"], host[m["name"]])
        for m in spec["containers"][0]["volumeMounts"]
        if m["name"] in host
    }


def test_flags_and_host_mounts_agree(chart: Chart) -> None:
    """Every path flag is mounted from the same host path, with defaults and with the rig's."""
    for sets in (
        (),
        (
            "kubeletRootDir=/var/lib/dracpu-rig/kubelet",
            "cdiDir=/var/lib/dracpu-rig/cdi",
            "nriSocket=/var/lib/dracpu-rig/run/nri.sock",
            "stateDir=/var/lib/dracpu-rig/dracpu",
        ),
    ):
        objects = chart.render(*sets)
        f, m = flags(objects), mounts(objects)
        root = f["kubelet-root-dir"]
        for path in (f"{root}/plugins", f"{root}/plugins_registry", f["cdi-dir"], f["state-dir"]):
            assert m[path][1] == path
        nri_dir = f["nri-socket"].rsplit("/", 1)[0]
        assert m[nri_dir][1] == nri_dir
        assert m["/sys/fs/cgroup"][1] == "/sys/fs/cgroup"


def test_defaults_match_upstream_and_flags_render(chart: Chart) -> None:
    f = flags(chart.render())
    assert f == {
        "bind-address": ":8080",
        "kubelet-root-dir": "/var/lib/kubelet",
        "cdi-dir": "/var/run/cdi",
        "state-dir": "/var/lib/dracpu",
        "nri-socket": "/var/run/nri/nri.sock",
        "expose-pcie-roots": "false",
        "full-pcpus-only": "false",
        "distribute-across-numa": "false",
        "strategy": "packed",
        "hostname-override": "$(NODE_NAME)",
        "config": "/etc/dracpu/config.yaml",
    }
    f = flags(
        chart.render(
            "args.exposePCIeRoots=true",
            "args.fullPCPUsOnly=true",
            "args.strategy=spread",
            "args.sysfsRoot=/host/sys",
            "healthzPort=9090",
            "args.kubeconfig=/etc/kube/config",
            "args.extraArgs[0]=--x-y=1",
        )
    )
    assert f["expose-pcie-roots"] == "true"
    assert f["full-pcpus-only"] == "true"
    assert f["strategy"] == "spread"
    assert f["sysfs-root"] == "/host/sys"
    assert f["bind-address"] == ":9090"
    assert f["kubeconfig"] == "/etc/kube/config"
    assert f["x-y"] == "1"


def test_deprecated_args_fold_into_the_config_file(chart: Chart) -> None:
    """As in dra-driver-cpu: args.* wins over driverConfig; a set hostname drops the flag."""
    objects = chart.render(
        "args.cpuDeviceMode=individual",
        "driverConfig.cpuDeviceMode=grouped",
        "driverConfig.reservedCPUs=0-1",
        "args.hostnameOverride=n7",
    )
    config = yaml.safe_load(find(objects, "ConfigMap", "dracpu-config")["data"]["config.yaml"])
    assert config == {
        "apiVersion": "v1alpha1",
        "cpuDeviceMode": "individual",
        "reservedCPUs": "0-1",
        "hostnameOverride": "n7",
    }
    assert "hostname-override" not in flags(objects)


def test_explicit_api_endpoint_sets_the_in_cluster_env(chart: Chart) -> None:
    env = {e["name"]: e for e in container(chart.render())["env"]}
    assert "KUBERNETES_SERVICE_HOST" not in env
    env = {
        e["name"]: e
        for e in container(chart.render("apiServer.host=127.0.0.1", "apiServer.port=16443"))["env"]
    }
    assert env["KUBERNETES_SERVICE_HOST"]["value"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"]["value"] == "16443"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The kubelet's rolling-update socket names (docs/run.md): each pod's own sockets.
    assert env["POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert "apiServer.port is required" in chart.render_error("apiServer.host=127.0.0.1")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("args.strategy=random", "/args/strategy"),
        ("args.cpuDeviceMode=all", "/args/cpuDeviceMode"),
        ("args.reservedCPUs=0-", "/args/reservedCPUs"),
        ("kubeletRootDir=relative", "/kubeletRootDir"),
        ("stateDir=var/lib", "/stateDir"),
        ("healthzPort=0", "/healthzPort"),
        ("driverConfig.cpudevicemode=grouped", "cpudevicemode"),
        ("nope=1", "nope"),
        ("args.extraArgs[0]=-x", "/args/extraArgs/0"),
    ],
)
def test_schema_refuses_bad_values(chart: Chart, value: str, fragment: str) -> None:
    assert fragment in chart.render_error(value)


def test_values_yaml_satisfies_its_schema() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), schema)


def test_rendered_args_parse_with_dracpu_run(chart: Chart) -> None:
    """The chart's flags are what `dracpu run` accepts (once the daemon is on this branch)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    if "run" not in commands.choices:  # type: ignore[operator]
        pytest.skip("`dracpu run` is not on this branch yet (daemon branch)")
    args = container(chart.render("args.sysfsRoot=/sys"))["args"]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in args]
    parser.parse_args(["run", *args])


def run_config(objects: list[dict[str, Any]]) -> Any:
    """The RunConfig `dracpu run` resolves from the rendered flags (no config file)."""
    from dracpu.daemon.config import FIELDS, resolve

    args = [a.replace("$(NODE_NAME)", "node-1") for a in container(objects)["args"]]
    ns = build_parser().parse_args(["run", *args])
    flags = {s.attr: getattr(ns, s.attr) for s in FIELDS if hasattr(ns, s.attr)}
    return resolve(flags, None)


def status_rule(objects: list[dict[str, Any]]) -> list[str]:
    rules = find(objects, "ClusterRole", "dracpu")["rules"]
    (rule,) = [r for r in rules if r["resources"] == ["resourceclaims/driver"]]
    names: list[str] = rule["resourceNames"]
    return names


def memory_classes(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "DeviceClass" and o["metadata"]["name"] != "dra.cpu"]


def test_memory_driver_is_off_by_default(chart: Chart) -> None:
    objects = chart.render()
    assert not {"memory-driver", "bind-memory-to-cpus"} & flags(objects).keys()
    assert memory_classes(objects) == []
    assert status_rule(objects) == ["dra.cpu"]
    config = run_config(objects)
    assert (config.memory_driver, config.bind_memory_to_cpus) == (False, False)


def test_memory_driver_value_passes_the_flag_and_installs_the_memory_classes(
    chart: Chart, shared_dir: Path
) -> None:
    """memoryDriver.enabled: --memory-driver, the dra.memory claim-status rule, and the three
    DeviceClasses equal (selectors and all) to the ones dracpu derives from an x86_64 node
    with 2 MiB and 1 GiB hugepages (`dracpu inspect memory`)."""
    objects = chart.render("memoryDriver.enabled=true")
    assert flags(objects)["memory-driver"] == "true"
    assert "bind-memory-to-cpus" not in flags(objects)
    assert status_rule(objects) == ["dra.cpu", "dra.memory"]
    assert run_config(objects).memory_driver is True
    topology = read_memory(shared_dir / "fixtures/sysfs/2-socket-4-node-40-core/sys")
    expected = device_classes(topology)
    assert [c["metadata"]["name"] for c in expected] == [
        "dra.memory",
        "dra.hugepages-2m",
        "dra.hugepages-1g",
    ]
    rendered = memory_classes(objects)
    assert all(c["metadata"]["labels"]["app"] == "dracpu" for c in rendered)
    for c in rendered:
        c["metadata"] = {"name": c["metadata"]["name"]}
    assert rendered == expected
    # The memory driver's slices and claims need nothing else: the slice and claim rules are
    # per resource, not per driver, and the slice-node policy matches the ServiceAccount.
    assert (
        find(chart.render(), "ClusterRole", "dracpu")["rules"][:3]
        == find(objects, "ClusterRole", "dracpu")["rules"][:3]
    )


def test_bind_memory_to_cpus_value_passes_the_flag(chart: Chart) -> None:
    objects = chart.render("args.bindMemoryToCPUs=true")
    assert flags(objects)["bind-memory-to-cpus"] == "true"
    assert "memory-driver" not in flags(objects)
    assert run_config(objects).bind_memory_to_cpus is True


def test_memory_device_classes_can_be_replaced(chart: Chart) -> None:
    """Other page sizes (arm64 with 64 KiB pages) through memoryDriver.deviceClasses."""
    objects = chart.render(
        "memoryDriver.enabled=true",
        "memoryDriver.deviceClasses[0].name=dra.memory",
        "memoryDriver.deviceClasses[0].pageSize=64Ki",
        "memoryDriver.deviceClasses[0].hugeTLB=false",
    )
    (only,) = memory_classes(objects)
    (selector,) = only["spec"]["selectors"]
    assert '.pageSize == "64Ki"' in selector["cel"]["expression"]
    assert selector["cel"]["expression"].endswith(".hugeTLB == false")
    for value, fragment in (
        ("memoryDriver.deviceClasses[0].pageSize=4k", "/memoryDriver/deviceClasses/0/pageSize"),
        ("memoryDriver.deviceClasses[0].name=Bad_Name", "/memoryDriver/deviceClasses/0/name"),
        ("memoryDriver.enable=true", "enable"),
    ):
        assert fragment in chart.render_error("memoryDriver.enabled=true", value)
