"""A small DRA driver process for the kubelet e2e tests, built on dracpu's kubelet servers.

It stands in for ``dracpu run`` until the daemon exists: it serves the kubelet through
:func:`dracpu.kubelet.plugin.serve_kubelet_plugin` (plugin-watcher registration, DRA v1/v1beta1,
health), prepares claims by reading their allocation from the API (plain httpx) and writing one
CDI spec per claim, and (``--devices N``) publishes ``N`` devices ``cpu0..`` for its node with
:class:`dracpu.kube.SlicePublisher`. Every call is appended as one JSON line to ``--calls`` so
the tests can check what the kubelet asked for and how often:

* ``{"op": "registered", "registered": bool, "error": str}`` per NotifyRegistrationStatus;
* ``{"op": "prepare", "uid", "namespace", "name", "devices": [...], "cpus": str}``;
* ``{"op": "prepare-failed", "uid", "error"}`` for the first ``--fail-prepare`` attempts per claim;
* ``{"op": "unprepare", "uid"}``.

The CDI device ``<driver>/cpu=<claim uid>`` sets ``DRACPU_E2E_CLAIM=<uid>`` and
``DRA_CPUSET_<uid>=<cpus>`` (dashes as underscores), the variable dracpu's NRI side reads; the
CPUs are the numbers in the allocated device names. SIGTERM/SIGINT stop it cleanly (sockets
removed, registration first); SIGKILL leaves the sockets, like a crash.

Run: ``python -m tests.e2e.dra_plugin --node N --kubelet-root DIR --cdi-dir DIR
--kubeconfig FILE --calls FILE [--driver dra.cpu] [--devices 2] [--fail-prepare 0]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

from dracpu import DRIVER_NAME
from dracpu.kube.client import KubeClient
from dracpu.kube.config import load_kubeconfig
from dracpu.kube.publisher import SlicePublisher
from dracpu.kubelet.handler import (
    ClaimFailed,
    ClaimPrepared,
    ClaimRef,
    ClaimUnprepared,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)
from dracpu.kubelet.health import HealthBoard
from dracpu.kubelet.plugin import KubeletPluginConfig, serve_kubelet_plugin
from dracpu.kubelet.registration import RegistrationStatusBoard

FAILURE_TEXT = "dracpu-e2e: injected prepare failure"


class CallLog:
    """Appends one JSON object per line and flushes, so a reader sees every call at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, **entry: Any) -> None:
        self.out.write(json.dumps(entry, sort_keys=True) + "\n")
        self.out.flush()


def cpus_of(devices: Sequence[str]) -> str:
    """``["cpu1", "cpu0"]`` -> ``"0,1"``: the CPU numbers in the device names."""
    return ",".join(str(n) for n in sorted(int(d.removeprefix("cpu")) for d in devices))


class CdiClaimHandler:
    """Prepares a claim as the devices the scheduler allocated to this driver, one CDI spec each."""

    def __init__(
        self, api: httpx.AsyncClient, driver: str, cdi_dir: Path, log: CallLog, fail_prepare: int
    ) -> None:
        self.api, self.driver, self.cdi_dir, self.log = api, driver, cdi_dir, log
        self.kind = f"{driver}/cpu"
        self.fail_prepare = fail_prepare
        self.attempts: dict[str, int] = {}

    def _spec(self, uid: str) -> Path:
        return self.cdi_dir / f"{self.driver}-e2e-{uid}.json"

    async def _prepare_one(self, claim: ClaimRef) -> PrepareResult:
        n = self.attempts[claim.uid] = self.attempts.get(claim.uid, 0) + 1
        if n <= self.fail_prepare:
            error = f"{FAILURE_TEXT} {n} of {self.fail_prepare} for {claim.namespace}/{claim.name}"
            self.log.write(op="prepare-failed", uid=claim.uid, error=error)
            return ClaimFailed(error=error)
        # A plain GET, not dracpu's client: the harness must not share the bugs it looks for.
        r = await self.api.get(
            f"/apis/resource.k8s.io/v1/namespaces/{claim.namespace}/resourceclaims/{claim.name}"
        )
        if r.status_code != 200:
            return ClaimFailed(error=f"GET claim {claim.namespace}/{claim.name}: {r.status_code}")
        obj = r.json()
        if obj["metadata"]["uid"] != claim.uid:
            return ClaimFailed(error=f"claim {claim.namespace}/{claim.name} has another UID")
        results = [
            r
            for r in obj.get("status", {})
            .get("allocation", {})
            .get("devices", {})
            .get("results", [])
            if r["driver"] == self.driver
        ]
        names = [r["device"] for r in results]
        cpus = cpus_of(names)
        env_uid = claim.uid.replace("-", "_")
        spec = {
            "cdiVersion": "0.6.0",
            "kind": self.kind,
            "devices": [
                {
                    "name": claim.uid,
                    "containerEdits": {
                        "env": [f"DRACPU_E2E_CLAIM={claim.uid}", f"DRA_CPUSET_{env_uid}={cpus}"]
                    },
                }
            ],
        }
        tmp = self._spec(claim.uid).with_suffix(".tmp")
        tmp.write_text(json.dumps(spec))
        tmp.rename(self._spec(claim.uid))
        self.log.write(
            op="prepare",
            uid=claim.uid,
            namespace=claim.namespace,
            name=claim.name,
            devices=names,
            cpus=cpus,
        )
        cdi_id = f"{self.kind}={claim.uid}"
        return ClaimPrepared(
            devices=tuple(
                PreparedDevice(
                    pool_name=r["pool"],
                    device_name=r["device"],
                    request_names=(r["request"],),
                    cdi_device_ids=(cdi_id,),
                )
                for r in results
            )
        )

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PrepareResult]:
        return {c.uid: await self._prepare_one(c) for c in claims}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, UnprepareResult]:
        for c in claims:
            self._spec(c.uid).unlink(missing_ok=True)
            self.log.write(op="unprepare", uid=c.uid)
        return {c.uid: ClaimUnprepared() for c in claims}


async def _log_registration(board: RegistrationStatusBoard, log: CallLog) -> None:
    seen = 0
    while True:
        state = await board.wait_for_notification(seen)
        seen = state.notifications
        log.write(op="registered", registered=state.registered, error=state.error)


async def _stop_on_signal(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            cancel.cancel()
            return


async def run(args: argparse.Namespace, log: CallLog) -> None:
    """Serve until SIGTERM/SIGINT. Cancellation stops the servers and the publisher."""
    config = KubeletPluginConfig(driver_name=args.driver, kubelet_root=args.kubelet_root)
    board = RegistrationStatusBoard()
    kubeconfig = load_kubeconfig(args.kubeconfig)
    api = httpx.AsyncClient(base_url=kubeconfig.server, verify=kubeconfig.ssl_context())
    async with api, KubeClient(kubeconfig) as client, trio.open_nursery() as n:
        n.start_soon(_stop_on_signal, n.cancel_scope)
        handler = CdiClaimHandler(api, args.driver, args.cdi_dir, log, args.fail_prepare)
        n.start_soon(_log_registration, board, log)
        await n.start(
            functools.partial(
                serve_kubelet_plugin, config, handler, HealthBoard(), registration=board
            )
        )
        log.write(op="serving")
        if args.devices:
            publisher = SlicePublisher(client, node_name=args.node, driver=args.driver)
            publisher.set_desired(
                [
                    {
                        "driver": args.driver,
                        "nodeName": args.node,
                        "pool": {"name": args.node, "generation": 0, "resourceSliceCount": 1},
                        "devices": [
                            {"name": f"cpu{i}", "attributes": {"dra.cpu/cpuID": {"int": i}}}
                            for i in range(args.devices)
                        ],
                    }
                ]
            )
            n.start_soon(publisher.run)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--driver", default=DRIVER_NAME)
    p.add_argument("--node", required=True)
    p.add_argument("--kubelet-root", type=Path, required=True)
    p.add_argument("--cdi-dir", type=Path, required=True)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--calls", type=Path, required=True)
    p.add_argument("--devices", type=int, default=2, help="devices to publish (0: none)")
    p.add_argument("--fail-prepare", type=int, default=0, help="failed attempts per claim")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with args.calls.open("a") as out:
        trio.run(run, args, CallLog(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
