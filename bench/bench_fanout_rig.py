"""Benchmark: the shared-pool fan-out on the rig, through the real kubelet and containerd (NRI).

    python bench/bench_fanout_rig.py [--pods 50]   # `just bench-fanout-rig` takes the rig lock

``dracpu run`` (grouped by NUMA node, NRI) is the node's DRA driver. ``--pods`` shared pods
(busybox ``sleep``, no claim) are started and settle on the whole pool; then one pod with a
1-CPU claim is created. Timed, polling every container's ``cpuset.cpus`` in its cgroup:

* shrink: from the claim container seen pinned to its CPU until every shared container is off
  it (dracpu's UpdateContainers, applied by containerd);
* widen: from the claim pod's deletion until every shared container is back on the whole pool.

Goal (issue 11): containerd has applied the shrink for 500 shared containers within 2 s. The
rig's kubelet runs at most 110 pods (its default ``maxPods``), so this measures fewer and prints
the count beside the figure. Needs root and the rig up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dracpu.core.cpuset import CpuSet  # noqa: E402
from tests.e2e.dra_driver import DracpuDaemon, daemon_argv  # noqa: E402
from tests.e2e.enforcement import NS, claim_cpus, claim_pod, new_tag, template  # noqa: E402
from tests.e2e.kube import (  # noqa: E402
    RESOURCE,
    Created,
    busybox_container,
    cgroup_cpuset,
    kube_client,
    node_slices,
    pod_body,
    wait_for,
    wait_running,
)
from tests.e2e.rig import current, rig_is_up  # noqa: E402

POLL = 0.02


def until(what: str, check: Any, timeout: float) -> float:
    """Poll ``check`` every 20 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_fanout_rig: timed out waiting for {what}")
        time.sleep(POLL)
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()
    rig = current()
    if not rig_is_up(rig):
        sys.exit("bench_fanout_rig: the rig is not up (`just rig-up`)")
    with (
        tempfile.TemporaryDirectory(prefix="dracpu-bench-fanout-") as tmp,
        kube_client(rig) as kube,
    ):
        state, log = Path(tmp) / "state", Path(tmp) / "dracpu.log"
        argv = daemon_argv(rig, state, cpu_device_mode="grouped", group_by="numanode")
        drv = DracpuDaemon(rig, argv, log, state)
        created = Created(kube)
        try:
            drv.start()
            wait_for("published slice", lambda: node_slices(kube, rig), 20)
            if kube.get(f"{RESOURCE}/deviceclasses/dra.cpu").status_code == 404:
                sel = [{"cel": {"expression": 'device.driver == "dra.cpu"'}}]
                created.post(
                    f"{RESOURCE}/deviceclasses",
                    {"metadata": {"name": "dra.cpu"}, "spec": {"selectors": sel}},
                )
            tag = new_tag()
            names = [f"bench-shared-{tag}-{i}" for i in range(args.pods)]
            began = time.monotonic()
            for name in names:
                body = pod_body(name, [busybox_container(rig, "main", "sleep 3600")])
                body["spec"]["terminationGracePeriodSeconds"] = 1
                created.pod(body)
            shared = []
            for i, name in enumerate(names):
                shared.append(wait_running(kube, NS, name, timeout=300))
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1}/{len(names)} shared pods running", flush=True)
            print(f"  {len(shared)} shared pods up in {time.monotonic() - began:.0f} s", flush=True)
            whole = cgroup_cpuset(rig, shared[0], "main")

            def all_on(cpus: str) -> bool:
                return all(cgroup_cpuset(rig, p, "main") == cpus for p in shared)

            until("shared pods on the whole pool", lambda: all_on(whole), 30)
            template(created, f"bench-{tag}")
            excl = f"bench-excl-{tag}"
            created.pod(claim_pod(rig, excl, f"bench-{tag}"))
            pod = wait_running(kube, NS, excl, timeout=90)
            _, held = claim_cpus(kube, pod)
            pinned = until(
                "the claim container pinned", lambda: cgroup_cpuset(rig, pod, "c0") == held, 30
            )
            pool = str(CpuSet.parse(whole) - CpuSet.parse(held))
            shrunk = until(f"all shared pods on {pool}", lambda: all_on(pool), 30)
            deleted = time.monotonic()
            kube.delete(f"/api/v1/namespaces/{NS}/pods/{excl}")
            widened = until("all shared pods back on the whole pool", lambda: all_on(whole), 60)
        finally:
            created.cleanup()
            drv.stop()
    print(
        f"fan-out on the rig (real kubelet + containerd, NRI), {len(shared)} shared containers:"
        f" shrink {1e3 * (shrunk - pinned):.0f} ms after the claim container was seen pinned"
        f" (goal: 500 within 2 s); widen {1e3 * (widened - deleted):.0f} ms after the claim"
        f" pod's deletion (includes the kubelet stopping it and unpreparing the claim);"
        f" polled every {POLL * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
