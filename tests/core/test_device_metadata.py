"""KEP-5304 device metadata: the same paths, document and CDI spec as the kubelet-plugin library."""

from __future__ import annotations

from dracpu.core.device_metadata import (
    METADATA_API_VERSION,
    MetadataDevice,
    cdi_spec_glob,
    claim_metadata_dir,
    metadata_files,
)

NUMA_ATTRS = {"dra.cpu/numaNodeID": {"int": 1}, "dra.cpu/socketID": {"int": 0}}


def test_template_claim_grouped_device() -> None:
    (files,) = metadata_files(
        driver="dra.cpu",
        plugin_data_dir="/var/lib/kubelet/plugins/dra.cpu",
        cdi_dir="/var/run/cdi",
        namespace="team",
        name="pod-cpu-abcde",
        uid="u-1",
        pod_claim_name="cpu",
        devices=[MetadataDevice("req", "node1", "cpudevnuma001", NUMA_ATTRS, allocated_cpus=4)],
    )
    assert files.metadata_path == (
        "/var/lib/kubelet/plugins/dra.cpu/dra-device-metadata/team_pod-cpu-abcde/req/metadata.json"
    )
    assert files.cdi_path == "/var/run/cdi/dra.cpu_metadata_u-1_req.json"
    assert files.cdi_device_id == "dra.cpu/metadata=u-1_req"
    assert files.metadata_body == {
        "kind": "DeviceMetadata",
        "apiVersion": METADATA_API_VERSION,
        "metadata": {"name": "pod-cpu-abcde", "namespace": "team", "uid": "u-1", "generation": 1},
        "podClaimName": "cpu",
        "requests": [
            {
                "name": "req",
                "devices": [
                    {
                        "driver": "dra.cpu",
                        "pool": "node1",
                        "name": "cpudevnuma001",
                        "attributes": {**NUMA_ATTRS, "dra.cpu/allocatedNumCPUs": {"int": 4}},
                    }
                ],
            }
        ],
    }
    (device,) = files.cdi_spec["devices"]
    assert files.cdi_spec["kind"] == "dra.cpu/metadata"
    assert device["name"] == "u-1_req"
    assert device["containerEdits"]["mounts"] == [
        {
            "hostPath": files.metadata_path,
            "containerPath": "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/"
            "cpu/req/dra.cpu-metadata.json",
            "options": ["ro", "bind"],
        }
    ]


def test_plain_claim_individual_devices_share_one_request_file() -> None:
    devices = [
        MetadataDevice("cpus", "node1", "cpudev000", {}),
        MetadataDevice("cpus", "node1", "cpudev001", {}),
        MetadataDevice("more/sub", "node1", "cpudev002", {}),
    ]
    out = metadata_files(
        driver="dra.cpu",
        plugin_data_dir="/k/plugins/dra.cpu/",
        cdi_dir="/cdi/",
        namespace="ns",
        name="claim",
        uid="u2",
        pod_claim_name=None,
        devices=devices,
    )
    assert [f.request for f in out] == ["cpus", "more"]
    first = out[0]
    assert [d["name"] for d in first.metadata_body["requests"][0]["devices"]] == [
        "cpudev000",
        "cpudev001",
    ]
    assert "attributes" not in first.metadata_body["requests"][0]["devices"][0]
    assert "podClaimName" not in first.metadata_body
    mount = first.cdi_spec["devices"][0]["containerEdits"]["mounts"][0]
    assert mount["containerPath"] == (
        "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/claim/cpus/dra.cpu-metadata.json"
    )
    assert out[1].metadata_body["requests"][0]["name"] == "more/sub"
    assert out[1].metadata_path.startswith(claim_metadata_dir("/k/plugins/dra.cpu", "ns", "claim"))
    assert cdi_spec_glob("dra.cpu", "u2") == "dra.cpu_metadata_u2_*.json"


def test_cdi_spec_version_allows_a_device_name_starting_with_a_digit() -> None:
    # CDI requires spec version 0.5.0 for device names that start with a digit; claim UIDs often
    # do, and containerd then refuses the spec and the container ("unresolvable CDI devices").
    (files,) = metadata_files(
        driver="dra.cpu",
        plugin_data_dir="/var/lib/kubelet/plugins/dra.cpu",
        cdi_dir="/var/run/cdi",
        namespace="team",
        name="c",
        uid="1bf92f4f-f1af-4e88-8592-ee6557edb001",
        pod_claim_name=None,
        devices=[MetadataDevice("req", "node1", "cpudevnuma001", NUMA_ATTRS, allocated_cpus=1)],
    )
    assert files.cdi_spec["devices"][0]["name"][0].isdigit()
    major, minor, _ = (int(p) for p in files.cdi_spec["cdiVersion"].split("."))
    assert (major, minor) >= (0, 5)
