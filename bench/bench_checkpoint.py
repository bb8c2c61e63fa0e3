"""Benchmark: what one checkpoint write costs the owner with N claims held (issue 15, load).

Every prepare and unprepare writes the whole checkpoint (the claims the node holds). This
compares, in one run and on the same states (a synthetic 1,024-CPU node, grouped by NUMA node,
N claims of 1 CPU each):

- **full**: ``encode(node.snapshot(state))``, serializing every claim again (the owner did this
  until SnapshotJson; kept here as the floor to beat);
- **memo**: ``encode_canonical(SnapshotJson.encode(state))`` right after one claim was added,
  the owner's path now (only the new claim is serialized);
- **write**: the durable write of that document (temp file, fdatasync, rename, dir fsync) with
  ``CheckpointStore.write_canonical`` in ``--dir`` (default: a temp dir on /var/tmp's disk).

    python bench/bench_checkpoint.py [--held 1,100,1000] [--repeat 200] [--dir PATH]

Prints p50/p99 per figure and held count; asserts both encodings give the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.figures import ms  # noqa: E402
from dracpu.checkpoint import CheckpointStore, encode, encode_canonical  # noqa: E402
from dracpu.core import node  # noqa: E402
from dracpu.core.slices import DeviceMode, GroupBy  # noqa: E402
from dracpu.daemon.snapshot_json import SnapshotJson  # noqa: E402
from tests.support.claims import grouped, parsed, prepare  # noqa: E402
from tests.support.topologies import make_topology  # noqa: E402


def held_state(count: int) -> node.NodeState:
    """A 1,024-CPU node holding ``count`` 1-CPU claims, spread over its 8 NUMA nodes."""
    topology = make_topology(sockets=2, numa_per_socket=4, cores_per_numa=64, threads=2)
    config = node.NodeConfig(pool="bench-node", mode=DeviceMode.GROUPED, group_by=GroupBy.NUMANODE)
    state = node.NodeState.initial(topology, config)
    devices = sorted(state.devices)
    for i in range(count):
        uid = f"9a3c1f2e-1111-4222-8333-{i:012d}"
        state, _, results = prepare(state, parsed(uid, [grouped(devices[i % len(devices)], 1)]))
        assert isinstance(results[uid], node.ClaimPrepared), results[uid]
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="1,100,1000", help="claims held, comma-separated")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="state dir for the durable write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-", dir=args.dir or "/var/tmp") as d:
        store = CheckpointStore(Path(d), durable=True)
        print(f"durable writes in {d}; {args.repeat} repeats per figure")
        for count in (int(x) for x in args.held.split(",")):
            before = held_state(count)
            after = held_state(count + 1)  # the same claims, plus one: a prepare
            full, memo, write = [], [], []
            size = 0
            for _ in range(args.repeat):
                t = time.perf_counter()
                expected = encode(node.snapshot(after))
                full.append(time.perf_counter() - t)
                encoder = SnapshotJson()
                encoder.encode(before)
                # held_state built new claim objects: give the encoder the ones it memoized for
                # the claims already held, as the owner's states do.
                state = dataclasses.replace(after, claims={**after.claims, **before.claims})
                t = time.perf_counter()
                body_json = encoder.encode(state)
                data = encode_canonical(body_json)
                memo.append(time.perf_counter() - t)
                assert data == expected
                size = len(data)
                t = time.perf_counter()
                store.write_canonical(body_json)
                write.append(time.perf_counter() - t)
            print(
                f"{count:5d} claims held ({size / 1024:.0f} KiB): full {ms(full, 3)}; "
                f"memo {ms(memo, 3)}; durable write {ms(write, 3)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
