"""Pure slice planning: generation, counts, matching, semantic comparison, dropped fields."""

from __future__ import annotations

import copy
import itertools
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracpu import DRIVER_NAME
from dracpu.core.slice_plan import (
    SlicePlan,
    StoredForm,
    compare_content,
    content,
    decode_index,
    generate_name,
    missing_gates,
    parse_quantity,
    plan_slices,
)
from dracpu.errors import InvalidValueError
from tests.kube.specs import make_specs

NODE = "node-a"
UID = "node-uid-1"


class Server:
    """A minimal model of the API server's slice store, to apply plans to."""

    def __init__(self, drop: frozenset[str] = frozenset()) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.counter = itertools.count(1)
        self.drop = drop

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        for dev in obj["spec"].get("devices", []):
            for f in self.drop:
                dev.pop(f, None)
        obj["metadata"]["resourceVersion"] = str(next(self.counter))
        return obj

    def apply(self, plan: SlicePlan) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
        stored = []
        for d in plan.deletes:
            assert self.objects[d.name]["metadata"]["uid"] == d.uid
            del self.objects[d.name]
        for w in plan.updates:
            name = w.body["metadata"]["name"]
            assert (
                self.objects[name]["metadata"]["resourceVersion"]
                == (w.body["metadata"]["resourceVersion"])
            )
            self.objects[name] = self._store(w.body)
            stored.append((w.index, w.body, self.objects[name]))
        for w in plan.creates:
            body = copy.deepcopy(w.body)
            n = next(self.counter)
            body["metadata"]["name"] = body["metadata"].pop("generateName") + f"x{n:04d}"
            body["metadata"]["uid"] = f"u{n}"
            self.objects[body["metadata"]["name"]] = self._store(body)
            stored.append((w.index, w.body, self.objects[body["metadata"]["name"]]))
        return stored

    def plan(self, desired: list[dict[str, Any]], **kw: Any) -> SlicePlan:
        kw.setdefault("owner_uid", UID)
        return plan_slices(
            desired, list(self.objects.values()), driver=DRIVER_NAME, node=NODE, **kw
        )


def test_first_publish_creates_all_slices_with_pool_fields_and_owner() -> None:
    server = Server()
    plan = server.plan(make_specs(NODE))
    assert (len(plan.creates), len(plan.updates), len(plan.deletes)) == (8, 0, 0)
    assert plan.generation == 1
    for i, w in enumerate(plan.creates):
        assert w.body["metadata"]["generateName"] == f"{i:05x}-dra.cpu-{NODE}-"
        assert w.body["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 8}
        assert w.body["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": UID, "controller": True}
        ]
        assert len(w.body["spec"]["devices"]) == 128
    server.apply(plan)
    assert server.plan(make_specs(NODE)).empty


def test_changed_devices_bump_generation_and_rewrite_every_slice() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE)))
    changed = make_specs(NODE)
    changed[3]["devices"][0]["attributes"]["dra.cpu/numaNodeID"] = {"int": 1}
    plan = server.plan(changed)
    assert plan.generation == 2
    assert (len(plan.creates), len(plan.updates), len(plan.deletes)) == (0, 8, 0)
    server.apply(plan)
    assert {o["spec"]["pool"]["generation"] for o in server.objects.values()} == {2}
    assert server.plan(changed).empty


def test_fewer_slices_delete_the_extra_and_fix_the_count() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE, slices=4)))
    smaller = make_specs(NODE, slices=2)
    plan = server.plan(smaller)
    assert len(plan.deletes) == 2
    assert len(plan.updates) == 2
    assert plan.generation == 2
    server.apply(plan)
    assert sorted(o["spec"]["pool"]["resourceSliceCount"] for o in server.objects.values()) == [
        2,
        2,
    ]
    assert server.plan(smaller).empty


def test_one_slice_deleted_is_recreated_with_a_new_generation() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE)))
    victim = sorted(server.objects)[5]
    del server.objects[victim]
    plan = server.plan(make_specs(NODE))
    assert [w.index for w in plan.creates] == [5]
    assert len(plan.updates) == 7
    assert plan.generation == 2


def test_after_a_wipe_the_generation_stays_monotonic_via_min_generation() -> None:
    server = Server()
    for _ in range(3):
        changed = make_specs(NODE, numa=_)
        plan = server.plan(changed)
        server.apply(plan)
    assert plan.generation == 3
    server.objects.clear()
    plan = server.plan(make_specs(NODE), min_generation=3)
    assert plan.generation == 4
    assert len(plan.creates) == 8


def test_obsolete_slices_are_deleted_without_touching_good_ones() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE, slices=2)))
    good = copy.deepcopy(server.objects)
    stray = copy.deepcopy(next(iter(good.values())))
    stray["metadata"].update(name="not-an-index", uid="u-stray", resourceVersion="9")
    old = copy.deepcopy(stray)
    old["metadata"].update(name="00001-dra.cpu-node-a-old", uid="u-old")
    old["spec"]["pool"]["generation"] = 0
    server.objects["not-an-index"] = stray
    server.objects["00001-dra.cpu-node-a-old"] = old
    plan = server.plan(make_specs(NODE, slices=2))
    assert sorted(d.name for d in plan.deletes) == ["00001-dra.cpu-node-a-old", "not-an-index"]
    assert not plan.updates
    assert not plan.creates
    assert plan.generation == 1


def test_duplicate_index_keeps_one_and_deletes_the_other() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE, slices=1)))
    (name,) = server.objects
    dup = copy.deepcopy(server.objects[name])
    dup["metadata"].update(name=name + "z", uid="u-dup")
    server.objects[name + "z"] = dup
    plan = server.plan(make_specs(NODE, slices=1))
    assert [d.name for d in plan.deletes] == [name + "z"]
    assert not plan.updates
    assert not plan.creates


def test_missing_owner_reference_or_label_triggers_an_update() -> None:
    server = Server()
    server.apply(server.plan(make_specs(NODE, slices=1), owner_uid=None))
    plan = server.plan(make_specs(NODE, slices=1))
    assert len(plan.updates) == 1
    assert plan.updates[0].body["metadata"]["ownerReferences"][0]["uid"] == UID
    server.apply(plan)
    plan = server.plan(make_specs(NODE, slices=1), labels={"app": "dracpu"})
    assert plan.updates[0].body["metadata"]["labels"] == {"app": "dracpu"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("1000m", Fraction(1)),
        ("1.5", Fraction(3, 2)),
        ("2Ki", Fraction(2048)),
        ("1e3", Fraction(1000)),
        ("1E", Fraction(10**18)),
        ("500u", Fraction(1, 2000)),
        (".5", Fraction(1, 2)),
    ],
    ids=str,
)
def test_parse_quantity(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1x", "1.2.3", "Ki"], ids=repr)
def test_parse_quantity_rejects(text: str) -> None:
    assert parse_quantity(text) is None


def test_content_compares_quantities_by_value_and_ignores_empty_values() -> None:
    a = {"devices": [{"name": "d", "capacity": {"c": {"value": "1000m"}}, "attributes": {}}]}
    b = {"devices": [{"name": "d", "capacity": {"c": {"value": "1"}}}], "taints": None}
    assert content(a) == content(b)
    c = {"devices": [{"name": "d", "capacity": {"c": {"value": "2"}}}]}
    assert content(a) != content(c)
    # Attribute strings are not quantities.
    s1 = {"devices": [{"name": "d", "attributes": {"x": {"string": "1k"}}}]}
    s2 = {"devices": [{"name": "d", "attributes": {"x": {"string": "1000"}}}]}
    assert content(s1) != content(s2)
    # An optional false flag equals an absent one.
    f = {"devices": [{"name": "d", "allowMultipleAllocations": False}]}
    assert content(f) == content({"devices": [{"name": "d"}]})


def test_dropped_fields_are_named_with_their_gates() -> None:
    sent = content(make_specs(NODE, slices=1, per_slice=2, consumable=True)[0])
    stored = content(make_specs(NODE, slices=1, per_slice=2)[0])
    dropped, changed = compare_content(sent, stored)
    assert dropped == ["devices[0].allowMultipleAllocations", "devices[1].allowMultipleAllocations"]
    assert changed == []
    assert missing_gates(dropped) == ["DRAConsumableCapacity"]
    assert missing_gates(["devices[2].taints", "devices[0].nodeName"]) == [
        "DRADeviceTaints",
        "DRAPartitionableDevices",
    ]
    assert missing_gates(["devices[0].attributes.x.ints"]) == ["DRAListTypeAttributes"]


def test_stored_form_stops_rewriting_after_fields_are_dropped() -> None:
    server = Server(drop=frozenset({"allowMultipleAllocations"}))
    desired = make_specs(NODE, slices=2, consumable=True)
    stored = server.apply(server.plan(desired))
    # Without remembering what the server can store, the planner would rewrite forever.
    assert not server.plan(desired).empty
    forms = {
        i: StoredForm(sent=content(sent["spec"]), stored=content(got["spec"]))
        for i, sent, got in stored
    }
    assert server.plan(desired, stored_forms=forms).empty
    # A real change of the desired content is still published.
    desired[0]["devices"][0]["name"] = "renamed"
    assert not server.plan(desired, stored_forms=forms).empty


def test_names_encode_the_index() -> None:
    assert generate_name(10, 8, DRIVER_NAME, NODE) == "0000a-dra.cpu-node-a-"
    assert decode_index("0000a-dra.cpu-node-a-xyz12", 8) == 10
    assert decode_index("node-a-dra.cpu-xyz", 8) is None
    assert decode_index("00g00-dra.cpu-x", 8) is None
    assert generate_name(0, 0x100001, DRIVER_NAME, NODE).startswith("000000-")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(driver="other.driver"), "spec.driver"),
        (lambda s: s.update(nodeName="node-b"), "spec.nodeName"),
        (lambda s: s.update(pool={}), "spec.pool.name"),
    ],
    ids=["driver", "node", "pool"],
)
def test_bad_desired_specs_are_rejected_with_their_index(mutate: Any, message: str) -> None:
    specs = make_specs(NODE, slices=2, per_slice=1)
    mutate(specs[1])
    with pytest.raises(InvalidValueError, match=rf"#1.*{message}|{message}.*#1"):
        plan_slices(specs, [], driver=DRIVER_NAME, node=NODE)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4),  # number of slices
            st.integers(min_value=1, max_value=3),  # devices per slice
            st.integers(min_value=0, max_value=2),  # numa value (content change)
            st.sets(st.integers(min_value=0, max_value=4)),  # slices deleted by "someone"
        ),
        min_size=1,
        max_size=6,
    )
)
def test_plans_converge_in_one_step_and_generations_only_grow(
    steps: list[tuple[int, int, int, set[int]]],
) -> None:
    server = Server()
    highest = 0
    for count, per, numa, wiped in steps:
        names = sorted(server.objects)
        for i in wiped:
            if i < len(names):
                del server.objects[names[i]]
        desired = make_specs(NODE, slices=count, per_slice=per, numa=numa)
        plan = server.plan(desired, min_generation=highest)
        assert plan.generation >= highest
        highest = plan.generation
        server.apply(plan)
        assert server.plan(desired, min_generation=highest).empty
        pools = [o["spec"]["pool"] for o in server.objects.values()]
        assert len(pools) == count
        assert all(
            p == {"name": NODE, "generation": highest, "resourceSliceCount": count} for p in pools
        )
