"""An extra kube-apiserver beside the rig's (hack/rig/extra-apiserver.sh), gate turned off."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import httpx
import pytest

from tests.e2e.kube import kube_client, wait_for
from tests.e2e.rig import HACK_DIR, Rig, apiserver_ready

pytestmark = pytest.mark.e2e

PORT = 16444


def _slice(rig: Rig, driver: str) -> dict[str, object]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": "rig-extra-"},
        "spec": {
            "driver": driver,
            "nodeName": rig.node_name,
            "pool": {"name": "p", "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "d0",
                    "allowMultipleAllocations": True,
                    "capacity": {"cpu": {"value": "2"}},
                }
            ],
        },
    }


def test_extra_apiserver_with_consumable_capacity_off(rig: Rig, kube: httpx.Client) -> None:
    prefix = f"/registry-extra-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [str(HACK_DIR / "extra-apiserver.sh"), str(PORT), prefix, "DRAConsumableCapacity=false"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    pid_file = rig.run_dir / f"extra-apiserver-{PORT}.pid"
    try:
        assert proc.returncode == 0, proc.stderr
        url = proc.stdout.strip()
        assert url == f"https://127.0.0.1:{PORT}"
        assert apiserver_ready(rig, url=url)
        driver = f"x{uuid.uuid4().hex[:8]}.smoke.dracpu.dev"
        with kube_client(rig, url) as extra:
            r = extra.post("/apis/resource.k8s.io/v1/resourceslices", json=_slice(rig, driver))
            assert r.status_code == 201, r.text
            # The gate is off there: the field is dropped on write.
            assert "allowMultipleAllocations" not in r.json()["spec"]["devices"][0]
        # ... and the object lives under the extra server's own etcd prefix, not the rig's.
        mine = kube.get("/apis/resource.k8s.io/v1/resourceslices").json()["items"]
        assert driver not in {s["spec"]["driver"] for s in mine}
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            wait_for("extra apiserver to exit", lambda: not os.path.exists(f"/proc/{pid}"), 10)
            pid_file.unlink()
