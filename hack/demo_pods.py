"""Sample pods for `just demo`: one grouped claim, one individual claim; print their CPUs.

Run as ``python -m hack.demo_pods run grouped|individual`` or ``delete`` against the rig's
admin kubeconfig. The pod asks for one CPU through a ResourceClaimTemplate (DeviceClass
``dra.cpu``, as upstream's ``hack/examples`` do), prints its ``Cpus_allowed_list`` and
``DRA_CPUSET_*`` env, and sleeps; then the node's ResourceSlices are printed.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

RIG = Path("/var/lib/dracpu-rig")
NAMESPACE = "dracpu-demo"
PODS = ("grouped", "individual")


def client() -> httpx.Client:
    config = yaml.safe_load((RIG / "admin.kubeconfig").read_text())
    cluster = config["clusters"][0]["cluster"]
    pki = RIG / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return httpx.Client(base_url=cluster["server"], verify=ctx, timeout=30)


def template(name: str) -> dict[str, Any]:
    """A claim template for one CPU. dracpu publishes one device mode at a time, so no selector
    is needed: a grouped device is asked for 1 CPU of its capacity, an individual one is 1 CPU."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "cpu",
                            "exactly": {
                                "deviceClassName": "dra.cpu",
                                **(
                                    {"capacity": {"requests": {"dra.cpu/cpu": "1"}}}
                                    if name == "grouped"
                                    else {}
                                ),
                            },
                        }
                    ]
                }
            }
        },
    }


def pod(name: str) -> dict[str, Any]:
    # PID 1's environ: sh drops variables whose names are not identifiers (the claim UID has
    # dashes) from what its children see.
    script = (
        "grep Cpus_allowed_list /proc/self/status; "
        "tr '\\0' '\\n' < /proc/1/environ | grep DRA_CPUSET_ || true; sleep 3600"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "dnsPolicy": "Default",
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": [{"name": "cpu", "resourceClaimTemplateName": name}],
            "containers": [
                {
                    "name": "app",
                    "image": "docker.io/library/busybox:dracpu-rig",
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "resources": {"claims": [{"name": "cpu"}]},
                }
            ],
        },
    }


def create(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = http.post(path, json=body)
    if response.status_code not in (200, 201, 409):
        sys.exit(f"demo: POST {path}: {response.status_code} {response.text[:300]}")


def run(name: str) -> None:
    with client() as http:
        create(http, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        base = f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaimtemplates"
        create(http, base, template(name))
        create(http, f"/api/v1/namespaces/{NAMESPACE}/pods", pod(name))
        deadline = time.monotonic() + 90
        while True:
            phase = http.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}").json()
            if phase.get("status", {}).get("phase") == "Running":
                break
            if time.monotonic() > deadline:
                events = http.get(f"/api/v1/namespaces/{NAMESPACE}/events").json()
                for event in events.get("items", [])[-5:]:
                    print(f"  event: {event.get('reason')}: {event.get('message')}")
                sys.exit(f"demo: pod {name} not running after 90 s")
            time.sleep(1)
        time.sleep(1)
        log = http.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/log").text
        print(f"pod {name}:")
        for line in log.splitlines():
            print(f"  {line}")
        slices = http.get("/apis/resource.k8s.io/v1/resourceslices").json()
        print("ResourceSlices:")
        for item in slices.get("items", []):
            spec = item["spec"]
            devices = ", ".join(d["name"] for d in spec.get("devices", []))
            print(f"  {item['metadata']['name']}: driver {spec['driver']}, devices {devices}")


def delete() -> None:
    with client() as http:
        http.delete(f"/api/v1/namespaces/{NAMESPACE}")
        deadline = time.monotonic() + 60
        while http.get(f"/api/v1/namespaces/{NAMESPACE}").status_code != 404:
            if time.monotonic() > deadline:
                sys.exit("demo: namespace still terminating after 60 s")
            time.sleep(1)
    print(json.dumps({"deleted": NAMESPACE}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3 and sys.argv[2] in PODS:
        run(sys.argv[2])
    elif sys.argv[1:] == ["delete"]:
        delete()
    else:
        sys.exit(f"usage: python -m hack.demo_pods run {'|'.join(PODS)} | delete")
