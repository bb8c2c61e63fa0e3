"""The memory parts of the ``dracpu`` command line.

- ``dracpu hugepages provision FILE``: apply an upstream ``HugePageProvision`` document
  (``-`` reads stdin) to this machine's per-node pools and print, as YAML, what the kernel gave
  (exit 1 when any pool got fewer pages than asked or refused the write; 2 on a bad file);
- ``dracpu inspect memory``: the memory topology, the ``dra.memory`` ResourceSlices and the
  DeviceClasses, as YAML documents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from dracpu.core.hugepage_provision import parse_provision, plan_provision
from dracpu.core.memory import DRIVER, MemoryTopology, size_string
from dracpu.core.memory_slices import MemorySliceOptions, build_memory_slice_specs, device_classes
from dracpu.core.quantity import format_bytes
from dracpu.core.slice_plan import plan_slices
from dracpu.errors import DracpuError
from dracpu.hugepages import HugePageSysfs, apply_targets
from dracpu.sysfs import DEFAULT_ROOT
from dracpu.sysfs_memory import read_memory

__all__ = ["add_hugepages_parser", "inspect_memory", "memory_document", "run_hugepages"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_hugepages_parser(commands: Any) -> None:
    """Add ``hugepages provision`` to the ``dracpu`` subcommands."""
    hugepages = commands.add_parser("hugepages", help="provision hugepage pools per NUMA node")
    hugepages.add_argument("--sysfs-root", type=Path, default=DEFAULT_ROOT, metavar="DIR")
    actions = hugepages.add_subparsers(dest="action", required=True, parser_class=type(hugepages))
    provision = actions.add_parser(
        "provision", help="apply a HugePageProvision file (as dra-driver-memory's setup tool)"
    )
    provision.add_argument("file", metavar="FILE", help="YAML file, or - for stdin")
    provision.add_argument("--dry-run", action="store_true", help="show the plan, write nothing")


def run_hugepages(args: argparse.Namespace) -> int:
    """Run ``dracpu hugepages provision``; returns the exit status."""
    root: Path = args.sysfs_root
    origin = "stdin" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        print(f"dracpu: error: {origin}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        provision = parse_provision(doc, origin=origin)
        nodes = [node.id for node in read_memory(root).nodes]
        targets = plan_provision(provision, nodes, origin=origin)
    except DracpuError as exc:
        print(f"dracpu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcomes = apply_targets(
        HugePageSysfs(root),
        targets,
        dry_run=args.dry_run,
        progress=lambda line: print(f"dracpu: hugepages: {line}", file=sys.stderr, flush=True),
    )
    report: dict[str, Any] = {"provision": provision.name, "dryRun": bool(args.dry_run)}
    if provision.default_size is not None:
        report["defaultHugepagesSize"] = f"{provision.default_size} (boot parameter, not applied)"
    report["pages"] = [
        {
            "node": o.target.node,
            "size": size_string(o.target.page_size),
            "requested": o.target.count,
            "before": o.before,
            **({} if args.dry_run else {"got": o.after}),
            **({"error": o.error} if o.error else {}),
        }
        for o in outcomes
    ]
    yaml.safe_dump(report, sys.stdout, sort_keys=False)
    if args.dry_run:
        return EXIT_OK
    short = [o for o in outcomes if not o.met]
    for o in short:
        print(f"dracpu: hugepages: {o.describe()}", file=sys.stderr)
    return EXIT_FAILED if short else EXIT_OK


def memory_document(topology: MemoryTopology) -> dict[str, Any]:
    """A YAML-friendly summary of the memory per NUMA node."""
    return {
        "pageSize": size_string(topology.page_size),
        "hugepageSizes": [size_string(s) for s in topology.hugepage_sizes],
        "numaNodes": [
            {
                "id": node.id,
                "cpus": str(node.cpus),
                "memTotal": format_bytes(node.total_bytes),
                "memFree": None if node.free_bytes is None else format_bytes(node.free_bytes),
                "hugepageBytes": format_bytes(node.hugepage_bytes),
                "memory": format_bytes(node.memory_bytes),
                "hugepages": {
                    size_string(p.page_size): {
                        "total": p.total,
                        "free": p.free,
                        "surplus": p.surplus,
                    }
                    for p in node.hugepages
                },
            }
            for node in topology.nodes
        ],
    }


def inspect_memory(root: Path, node_name: str) -> list[dict[str, Any]]:
    """The documents ``dracpu inspect memory`` prints: topology, slices, DeviceClasses."""
    topology = read_memory(root)
    specs = build_memory_slice_specs(topology, MemorySliceOptions(node_name))
    bodies = [w.body for w in plan_slices(specs, [], driver=DRIVER, node=node_name).creates]
    return [memory_document(topology), *bodies, *device_classes(topology)]
