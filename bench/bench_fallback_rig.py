"""Benchmark: the cgroup fallback's pin latency on the rig, through the real kubelet and containerd.

    flock /var/lock/dracpu-rig.lock python bench/bench_fallback_rig.py [--pods 5]

containerd is restarted with NRI disabled (``hack/rig/containerd-restart.sh --nri=off``) and
``dracpu run --enforcement=cgroups`` is the node's DRA driver. ``--pods`` claim pods (1 CPU each)
are created one after the other; for each, the daemon logs how long after its container's cgroup
appeared (the inotify event) it wrote the claim's CPUs. Goal: <= 100 ms. The figure includes
runc's own start-up: the claim shows in ``/proc/<pid>/environ`` only once runc has exec'd the
container's command (until then the container runs on the shared pool). containerd gets its
normal config back at the end, whatever happens. Needs root and the rig up; hold the rig lock.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.dra_driver import DracpuDaemon, daemon_argv  # noqa: E402
from tests.e2e.enforcement import NS, Containerd, claim_pod, new_tag, template  # noqa: E402
from tests.e2e.kube import (  # noqa: E402
    RESOURCE,
    Created,
    container_id,
    kube_client,
    node_slices,
    wait_for,
    wait_running,
)
from tests.e2e.rig import current, rig_is_up  # noqa: E402

PINNED = re.compile(
    r"cgroup fallback: container (?P<cid>[0-9a-f]+) of pod uid \S+ on CPUs \S+ \(claims [^)]*\), "
    r"(?P<ms>[0-9.]+) ms after its cgroup appeared"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    rig = current()
    if not rig_is_up(rig):
        sys.exit("bench_fallback_rig: the rig is not up (`just rig-up`)")
    containerd = Containerd(rig)
    with (
        tempfile.TemporaryDirectory(prefix="dracpu-bench-fallback-") as tmp,
        kube_client(rig) as kube,
    ):
        state, log = Path(tmp) / "state", Path(tmp) / "dracpu.log"
        argv = daemon_argv(
            rig, state, enforcement="cgroups", cpu_device_mode="grouped", group_by="numanode"
        )
        drv = DracpuDaemon(rig, argv, log, state)
        created = Created(kube)
        pins: list[float] = []
        try:
            containerd.restart(nri=False)
            drv.start()
            wait_for("published slice", lambda: node_slices(kube, rig), 20)
            if kube.get(f"{RESOURCE}/deviceclasses/dra.cpu").status_code == 404:
                sel = [{"cel": {"expression": 'device.driver == "dra.cpu"'}}]
                created.post(
                    f"{RESOURCE}/deviceclasses",
                    {"metadata": {"name": "dra.cpu"}, "spec": {"selectors": sel}},
                )
            tag = new_tag()
            template(created, f"bench-{tag}")
            for i in range(args.pods):
                name = f"bench-fallback-{tag}-{i}"
                began = time.monotonic()
                created.pod(claim_pod(rig, name, f"bench-{tag}"))
                cid = container_id(wait_running(kube, NS, name, timeout=90), "c0")

                def pinned(cid: str = cid) -> float | None:
                    for m in PINNED.finditer(log.read_text(errors="replace")):
                        if m["cid"] == cid:
                            return float(m["ms"])
                    return None

                ms = wait_for(f"pin of {name} logged", pinned, 10)
                assert ms is not None
                pins.append(ms)
                print(
                    f"  pod {i + 1}/{args.pods}: pinned {ms:.1f} ms after its cgroup appeared"
                    f" (pod running {time.monotonic() - began:.1f} s after creation)",
                    flush=True,
                )
                created.delete_pod(name)
        finally:
            created.cleanup()
            drv.stop()
            containerd.restore()
    pins.sort()
    print(
        f"cgroup fallback on the rig (real kubelet + containerd, NRI off), {len(pins)} claim pods:"
        f" cgroup appeared -> claim CPUs written: p50 {statistics.median(pins):.1f} ms,"
        f" max {pins[-1]:.1f} ms (goal <= 100 ms)"
    )


if __name__ == "__main__":
    main()
