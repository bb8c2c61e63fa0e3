"""The ``dracpu run`` and ``dracpu status`` command lines (wired into :mod:`dracpu.cli`).

``run`` flags default to "not given" so that :func:`dracpu.daemon.config.resolve` can apply the
precedence flags > file > defaults: only flags actually on the command line override the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dracpu.daemon.config import FIELDS, RunConfig, node_name, resolve
from dracpu.logs import LogFormat

__all__ = ["add_commands", "main_gather", "main_run", "main_status"]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


def add_commands(commands: Any) -> None:
    """Add ``run`` and ``status`` to the ``dracpu`` sub-command set."""
    run = commands.add_parser("run", help="run the node daemon (kubelet plugin, slices, claims)")
    run.add_argument("--config", type=Path, metavar="FILE", help="YAML driver config file")
    defaults = RunConfig()
    for spec in FIELDS:
        if not spec.flag:
            continue
        default = getattr(defaults, spec.attr)
        help_text = f"{spec.help} (file key {spec.key}; default {str(default) or 'none'})"
        if spec.is_bool:
            # `--flag` alone means true, as with Go's flag package; `--flag=false` also works.
            run.add_argument(
                spec.flag,
                dest=spec.attr,
                nargs="?",
                const=True,
                type=_bool,
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=help_text,
            )
        else:
            run.add_argument(
                spec.flag,
                dest=spec.attr,
                default=argparse.SUPPRESS,
                metavar="VALUE",
                help=help_text,
            )
    run.add_argument(
        "-v",
        "--v",
        dest="verbosity",
        type=int,
        default=None,
        metavar="N",
        help="log verbosity, klog style: 0 (default), 2 decisions, 4 internals, 6 debugging",
    )
    run.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=LogFormat.TEXT.value,
        help="text (klog-like, default) or json (one object per line)",
    )
    gather = commands.add_parser(
        "gather", help="write one archive for a bug report (topology, state, CDI, metrics, logs)"
    )
    gather.add_argument("--state-dir", type=Path, default=defaults.state_dir, metavar="DIR")
    gather.add_argument("--cdi-dir", type=Path, default=defaults.cdi_dir, metavar="DIR")
    gather.add_argument("--sysfs-root", type=Path, default=defaults.sysfs_root, metavar="DIR")
    gather.add_argument("--config", type=Path, default=None, metavar="FILE")
    gather.add_argument(
        "--endpoint",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the running daemon's HTTP endpoint (status, metrics, logs)",
    )
    gather.add_argument(
        "--kubeconfig",
        default=None,
        metavar="FILE",
        help="API server access for this node's ResourceSlices (in-cluster config if unset "
        "and in a pod; slices skipped otherwise)",
    )
    gather.add_argument("--node-name", default=None, metavar="NAME", help="default: host name")
    gather.add_argument("--output-dir", type=Path, default=Path("."), metavar="DIR")
    status = commands.add_parser("status", help="show the node daemon's claims, pool and health")
    status.add_argument("--state-dir", type=Path, default=defaults.state_dir, metavar="DIR")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="read /status from the daemon's HTTP endpoint first (e.g. http://127.0.0.1:8080); "
        "the status socket and then the state dir are used when it does not answer",
    )


def main_run(args: argparse.Namespace) -> int:
    """``dracpu run``: resolve the configuration, then run the daemon until a signal."""
    from dracpu.daemon import run as daemon_run

    flags = {spec.attr: getattr(args, spec.attr) for spec in FIELDS if hasattr(args, spec.attr)}
    config = resolve(flags, args.config)
    return daemon_run.main(config, verbosity=args.verbosity, log_format=LogFormat(args.log_format))


def main_status(args: argparse.Namespace) -> int:
    """``dracpu status``: print the daemon's status (exit 0 when up, 3 when down)."""
    from dracpu.daemon.status import read_status, render_text

    doc = _from_endpoint(args.endpoint) if args.endpoint else None
    if doc is None:
        doc = read_status(args.state_dir)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(doc))
    return 0 if doc.get("daemon") == "up" else 3


def _from_endpoint(url: str) -> dict[str, Any] | None:
    """The endpoint's ``/status`` document, or None when it does not answer with one."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/status", timeout=2.0)
        doc = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("daemon") == "up" else None


def main_gather(args: argparse.Namespace) -> int:
    """``dracpu gather``: write the archive and print its path (exit 0 even with parts
    missing; ``errors.txt`` in the archive says which and why)."""
    import os

    import httpx

    from dracpu.gather import GatherSources, gather

    name = args.node_name or node_name(RunConfig())
    endpoint = str(args.endpoint).rstrip("/")

    def fetch(path: str) -> bytes:
        response = httpx.get(endpoint + path, timeout=5.0)
        response.raise_for_status()
        return response.content

    list_slices = None
    if args.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"):
        list_slices = _slice_lister(args.kubeconfig, name)
    path = gather(
        GatherSources(
            node_name=name,
            sysfs_root=args.sysfs_root,
            state_dir=args.state_dir,
            cdi_dir=args.cdi_dir,
            config_file=args.config,
            fetch_endpoint=fetch,
            list_slices=list_slices,
        ),
        args.output_dir,
    )
    sys.stdout.write(f"{path}\n")
    return 0


def _slice_lister(kubeconfig: str | None, node: str) -> Any:
    """A callable listing this node's ResourceSlices of dra.cpu (one short trio run)."""

    def list_slices() -> list[dict[str, Any]]:
        import trio

        from dracpu import DRIVER_NAME
        from dracpu.kube.client import KubeClient
        from dracpu.kube.config import load_config
        from dracpu.kube.resources import RESOURCE_SLICES

        async def run() -> list[dict[str, Any]]:
            client = KubeClient(load_config(kubeconfig=kubeconfig))
            try:
                found = await client.list(
                    RESOURCE_SLICES,
                    field_selector=f"spec.nodeName={node},spec.driver={DRIVER_NAME}",
                )
                return list(found.items)
            finally:
                await client.aclose()

        return trio.run(run)

    return list_slices
