"""SnapshotJson gives exactly canonical_json(node.snapshot(state)), whatever happened before.

The node state machine's runs (prepare, unprepare, containers, topology changes, adoption) drive
one encoder; after every step its bytes must equal a fresh serialization, so a memo that kept a
claim too long (a claim replaced under the same UID, an adopted claim that learnt its devices)
fails here. The checkpoint written from those bytes loads back to the same body.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant

from dracpu.checkpoint import CheckpointStore, canonical_json, encode, encode_canonical
from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.daemon.snapshot_json import SnapshotJson
from tests.core.test_node_machine import NodeMachine
from tests.support.claims import grouped, parsed, prepare
from tests.support.topologies import make_topology


class EncoderMachine(NodeMachine):
    encoder: SnapshotJson | None = None

    @invariant()
    def encoder_matches_a_fresh_serialization(self) -> None:
        if self.encoder is None:
            self.encoder = SnapshotJson()
        expected = canonical_json(node.snapshot(self.state))
        assert self.encoder.encode(self.state) == expected
        assert self.encoder.encode(self.state) == expected  # all from the memo this time


EncoderMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
TestEncoderMachine = EncoderMachine.TestCase


def _empty_node() -> node.NodeState:
    """12 CPUs on 2 NUMA nodes, nothing held."""
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=3, threads=2)
    return node.NodeState.initial(topology, node.NodeConfig(pool="node-1"))


def test_the_document_is_the_same_bytes_as_encode(tmp_path: Path) -> None:
    state = _empty_node()
    for uid, count in (("a", 2), ("b", 1), ("c", 3)):
        state, _, _ = prepare(state, parsed(uid, [grouped("cpudevnuma001", count)]))
    assert len(state.claims) == 3
    body_json = SnapshotJson().encode(state)
    assert encode_canonical(body_json) == encode(node.snapshot(state))
    store = CheckpointStore(tmp_path, durable=False)
    store.write_canonical(body_json)
    assert store.load().body == node.snapshot(state)


def test_the_memo_keeps_only_the_claims_of_the_last_state() -> None:
    state = _empty_node()
    encoder = SnapshotJson()
    for i in range(4):
        state, _, _ = prepare(state, parsed(f"u{i}", [grouped("cpudevnuma000", 1)]))
        encoder.encode(state)
    state, _ = node.step(state, node.Unprepare(tuple(c.ref for c in state.claims.values())))
    assert encoder.encode(state) == canonical_json(node.snapshot(state))
    assert encoder._claims == {}


def test_a_claim_replaced_under_the_same_uid_is_serialized_again() -> None:
    """Adoption teaches a claim its name and devices: same UID, a new claim object."""
    state = _empty_node()
    state, _, _ = prepare(state, parsed("u1", [grouped("cpudevnuma000", 2)]))
    encoder = SnapshotJson()
    before = encoder.encode(state)
    claim = state.claims["u1"]
    learnt = dataclasses.replace(claim, ref=ClaimRef("other", "renamed", "u1"), adopted=True)
    state = dataclasses.replace(state, claims={**state.claims, "u1": learnt})
    after = encoder.encode(state)
    assert after != before
    assert after == canonical_json(node.snapshot(state))
    assert b'"renamed"' in after
