"""Command-line entry point ``dracpu``.

``dracpu inspect`` is the quick look that runs anywhere without a cluster: it reads a sysfs tree
and prints, as YAML, the topology, the ResourceSlices dracpu would publish, or the CPUs it would
allocate. Bad flags give a one-line error naming the value and exit with status 2. ``dracpu run``
(the node daemon) and ``dracpu status`` live in :mod:`dracpu.daemon.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from dracpu.core.allocator import AllocationOptions, Strategy, allocate
from dracpu.core.cpuset import CpuSet
from dracpu.core.names import DRIVER_NAME
from dracpu.core.slice_plan import plan_slices
from dracpu.core.slices import DeviceMode, GroupBy, SliceOptions, build_slice_specs
from dracpu.core.topology import CoreType, Topology
from dracpu.daemon import cli as daemon_cli
from dracpu.errors import AllocationError, CpuSetParseError, DracpuError, InvalidValueError
from dracpu.memory_cli import add_hugepages_parser, inspect_memory, run_hugepages
from dracpu.sysfs import DEFAULT_ROOT, read_topology

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"dracpu: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class UsageError(DracpuError):
    """A flag value is invalid; reported in one line with exit status 2."""


def _cpuset_arg(flag: str) -> Any:
    def parse(text: str) -> CpuSet:
        try:
            return CpuSet.parse(text, origin=flag)
        except CpuSetParseError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = "cpuset"
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid CPU count {text!r}: not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid CPU count {text!r}: must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full ``dracpu`` command line."""
    parser = _Parser(prog="dracpu", description=f"Kubernetes DRA driver for CPUs ({DRIVER_NAME}).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    inspect = commands.add_parser(
        "inspect", help="show topology, slices or an allocation without a cluster"
    )
    inspect.add_argument("--sysfs-root", type=Path, default=DEFAULT_ROOT, metavar="DIR")
    inspect.add_argument(
        "--reserved-cpus",
        type=_cpuset_arg("--reserved-cpus"),
        default=CpuSet(),
        metavar="SET",
        help="CPUs kept for the system; never published or allocated",
    )
    defaults = SliceOptions(node_name="")
    inspect.add_argument(
        "--cpu-device-mode",
        choices=[m.value for m in DeviceMode],
        default=defaults.mode.value,
        help="one device per CPU, or one consumable device per group (default: %(default)s)",
    )
    inspect.add_argument(
        "--group-by",
        choices=[g.value for g in GroupBy],
        default=defaults.group_by.value,
        help="the domain a grouped device stands for (default: %(default)s)",
    )
    inspect.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or os.uname().nodename,
        help="pool and node name (default: $NODE_NAME or the host name)",
    )
    inspect.add_argument("--expose-pcie-roots", action="store_true")
    what = inspect.add_subparsers(dest="what", required=True, parser_class=_Parser)
    what.add_parser("topology", help="the CPU topology read from sysfs")
    what.add_parser("slices", help="the ResourceSlice objects that would be published")
    alloc = what.add_parser("allocate", help="the CPUs a claim for N CPUs would get")
    alloc.add_argument("count", type=_positive_int, metavar="N")
    alloc.add_argument(
        "--free", type=_cpuset_arg("--free"), metavar="SET", help="free CPUs (default: all online)"
    )
    alloc.add_argument("--full-pcpus-only", action="store_true")
    alloc.add_argument("--distribute-across-numa", action="store_true")
    alloc.add_argument("--strategy", choices=[s.value for s in Strategy], default="packed")
    what.add_parser("memory", help="memory per NUMA node and the dra.memory slices and classes")
    add_hugepages_parser(commands)
    daemon_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the dracpu command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "hugepages":
        return run_hugepages(args)
    try:
        if args.command == "run":
            return daemon_cli.main_run(args)
        if args.command == "status":
            return daemon_cli.main_status(args)
        if args.command == "gather":
            return daemon_cli.main_gather(args)
        return _inspect(args)
    except BrokenPipeError:
        # The reader went away (``| head``); stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        print(f"dracpu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidValueError as exc:
        print(f"dracpu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AllocationError as exc:
        print(f"dracpu: cannot allocate: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _inspect(args: argparse.Namespace) -> int:
    root: Path = args.sysfs_root
    if args.what == "memory":
        try:
            docs = inspect_memory(root, args.node_name)
        except DracpuError as exc:
            raise UsageError(f"--sysfs-root {str(root)!r}: {exc}") from exc
        _print_all(docs)
        return 0
    try:
        topology = read_topology(root)
    except DracpuError as exc:
        raise UsageError(f"--sysfs-root {str(root)!r}: {exc}") from exc
    reserved: CpuSet = args.reserved_cpus
    not_online = reserved - topology.online
    if not_online:
        raise UsageError(
            f"--reserved-cpus {str(reserved)!r}: CPUs {not_online} are not online "
            f"(online: {topology.online})"
        )
    options = SliceOptions(
        node_name=args.node_name,
        reserved=reserved,
        mode=DeviceMode(args.cpu_device_mode),
        group_by=GroupBy(args.group_by),
        expose_pcie_roots=args.expose_pcie_roots,
    )
    if args.what == "topology":
        _print(topology_document(topology))
    elif args.what == "slices":
        _print_all(first_publish_bodies(build_slice_specs(topology, options), args.node_name))
    else:
        free: CpuSet = topology.online if args.free is None else args.free
        unknown = free - topology.online
        if unknown:
            raise UsageError(
                f"--free {str(free)!r}: CPUs {unknown} are not online (online: {topology.online})"
            )
        cpus = allocate(
            topology,
            free - reserved,
            args.count,
            AllocationOptions(
                full_pcpus_only=args.full_pcpus_only,
                distribute_across_numa=args.distribute_across_numa,
                strategy=Strategy(args.strategy),
            ),
        )
        _print(allocation_document(topology, cpus))
    return 0


def first_publish_bodies(specs: list[dict[str, Any]], node_name: str) -> list[dict[str, Any]]:
    """The ResourceSlice bodies the publisher would create for ``specs`` on an empty API server
    (without the Node ownerReference, whose UID only the API server knows)."""
    plan = plan_slices(specs, [], driver=DRIVER_NAME, node=node_name)
    return [write.body for write in plan.creates]


def topology_document(topology: Topology) -> dict[str, Any]:
    """A YAML-friendly summary of the topology, then one row per online CPU."""
    doc: dict[str, Any] = {
        "cpus": {
            "online": str(topology.online),
            "offline": str(topology.offline),
            "present": str(topology.present),
            "isolated": str(topology.isolated),
        },
        "smt": {
            "control": topology.smt_control,
            "enabled": topology.smt_enabled,
            "threadsPerCore": topology.threads_per_core,
            "uniform": topology.uniform_threads_per_core is not None,
        },
        "counts": {
            "sockets": len(topology.sockets),
            "dies": len(topology.dies),
            "numaNodes": len(topology.numa_nodes) or len(topology.numas),
            "cores": topology.num_cores,
            "cpus": topology.num_cpus,
        },
        "sockets": {sid: str(cpus) for sid, cpus in topology.sockets.items()},
        "numaNodes": [
            {
                "id": node.id,
                "cpus": str(node.cpus),
                "hasMemory": node.has_memory,
                "memoryKiB": node.memory_kib,
                "distances": list(node.distances),
                "localMemory": topology.local_memory_of(node.id),
            }
            for node in topology.numa_nodes
        ],
        "l3Groups": {cid: str(cpus) for cid, cpus in topology.l3_groups.items()},
        "l2Groups": len(topology.l2_groups),
    }
    if topology.is_hybrid:
        doc["coreTypes"] = {
            str(t): str(topology.cpus_of_type(t)) for t in CoreType if topology.cpus_of_type(t)
        }
    if topology.pcie_roots:
        doc["pcieRoots"] = {root: str(cpus) for root, cpus in topology.pcie_roots.items()}
    doc["cpuDetails"] = [
        {
            "cpu": i.cpu,
            "socket": i.socket,
            "die": i.die,
            "coreID": i.core_id,
            "core": topology.machine_core_id(i.cpu),
            "numa": i.numa,
            "cluster": i.cluster,
            "l2": i.l2,
            "l3": i.l3,
            "type": str(i.core_type),
            "baseFreqKHz": i.base_freq_khz,
            "maxFreqKHz": i.max_freq_khz,
        }
        for i in topology.cpus.values()
    ]
    return doc


def allocation_document(topology: Topology, cpus: CpuSet) -> dict[str, Any]:
    """What an allocation looks like in topology terms."""
    infos = [topology.cpus[c] for c in cpus]
    return {
        "cpus": str(cpus),
        "count": len(cpus),
        "sockets": sorted({i.socket for i in infos}),
        "numaNodes": sorted({i.numa for i in infos}),
        "l3Groups": sorted({i.l3 for i in infos if i.l3 is not None}),
        "cores": len({i.core_key for i in infos}),
        "wholeCores": sum(1 for key, core in topology.cores.items() if core <= cpus),
    }


def _print(doc: Any) -> None:
    yaml.safe_dump(doc, sys.stdout, sort_keys=False, default_flow_style=None, width=100)


def _print_all(docs: list[Any]) -> None:
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, width=100)
