"""The body validator: hostile JSON is either refused with a named field or safe to read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracpu.core.slice_plan import plan_slices
from dracpu.kube.claims import allocated_to_node
from dracpu.kube.errors import BadBodyError
from dracpu.kube.shape import MAX_DEPTH, check_list, check_object, check_watch_event, decode_json
from dracpu.kube.watch import _rv_int, object_key
from tests.kube.specs import make_specs

U = "http://x/apis/resource.k8s.io/v1/resourceslices"
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
)
names = st.sampled_from(
    ["metadata", "items", "spec", "status", "name", "namespace", "resourceVersion", "uid",
     "labels", "ownerReferences", "pool", "devices", "allocation", "results", "driver",
     "nodeSelector", "nodeSelectorTerms", "matchFields", "values", "generation", "kind"]
)  # fmt: skip
hostile = st.recursive(
    scalars,
    lambda inner: st.dictionaries(names, inner, max_size=5) | st.lists(inner, max_size=3),
    max_leaves=30,
)


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything at all."""
    return st.one_of(*[right] * 8, hostile)


def opt(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()})


text = st.text(max_size=4)
near_objects = st.fixed_dictionaries(
    {"metadata": maybe(st.fixed_dictionaries(
        {"name": maybe(st.text(min_size=1, max_size=4))},
        optional={
            "namespace": maybe(text), "resourceVersion": maybe(st.sampled_from(["1", "x", ""])),
            "uid": maybe(text), "labels": maybe(st.dictionaries(text, text, max_size=2)),
            "ownerReferences": maybe(st.lists(maybe(opt(kind=text, name=text, uid=text)))),
        },
    ))},
    optional={
        "spec": opt(
            driver=st.just("dra.cpu"), nodeName=st.just("node-a"),
            pool=opt(name=st.just("node-a"), generation=st.integers(0, 3)),
            devices=st.lists(maybe(opt(name=text)), max_size=2),
        ),
        "status": opt(allocation=opt(
            devices=opt(results=st.lists(maybe(opt(driver=st.just("dra.cpu"), pool=text)))),
            nodeSelector=opt(nodeSelectorTerms=st.lists(maybe(opt(matchFields=st.lists(maybe(
                opt(key=st.just("metadata.name"), operator=st.just("In"),
                    values=st.lists(text))))))))),
        ),
    },
)  # fmt: skip
near_lists = st.one_of(
    hostile,
    st.fixed_dictionaries(
        {"items": maybe(st.lists(maybe(near_objects), max_size=3))},
        optional={"metadata": opt(resourceVersion=text, **{"continue": text})},
    ),
)
near_events = st.one_of(
    hostile,
    st.fixed_dictionaries(
        {
            "type": maybe(st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"])),
            "object": maybe(near_objects),
        }
    ),
)


def read_everything(obj: dict[str, Any]) -> None:
    """What the reflector, claim cache and publisher read from a stored object."""
    object_key(obj)
    _rv_int(obj)
    allocated_to_node(obj, node="n", driver="dra.cpu", pool="n")
    plan_slices(
        make_specs("node-a", slices=1, per_slice=2),
        [obj],
        driver="dra.cpu",
        node="node-a",
        owner_uid="u",
    )


@settings(max_examples=300, deadline=None)
@given(body=near_lists)
def test_hostile_list_bodies_are_refused_or_safe(body: Any) -> None:
    try:
        page = check_list(body, method="GET", url=U)
    except BadBodyError as exc:
        error = exc
    else:
        for item in page.get("items") or []:
            read_everything(item)
        return
    assert error.url == U
    assert str(error).startswith(f"GET {U}: bad body")


@settings(max_examples=300, deadline=None)
@given(body=near_events)
def test_hostile_watch_events_are_refused_or_safe(body: Any) -> None:
    try:
        event = check_watch_event(body, url=U)
    except BadBodyError:
        return
    if event["type"] not in ("BOOKMARK", "ERROR"):
        read_everything(event["object"])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 200_000])
def test_deep_nesting_is_refused_without_recursion(depth: int) -> None:
    with pytest.raises(BadBodyError, match=f"nested deeper than {MAX_DEPTH}"):
        decode_json(b"[" * depth + b"]" * depth, method="GET", url=U)


def test_errors_name_the_field() -> None:
    body = {"metadata": {}, "items": [{"metadata": {"name": "a"}}, {"metadata": {"labels": 3}}]}
    with pytest.raises(BadBodyError) as exc:
        check_list(body, method="GET", url=U)
    assert exc.value.field == "items[1].metadata.labels"
    assert "is a number, expected an object" in str(exc.value)


def test_status_objects_keep_their_string_status() -> None:
    status = {"kind": "Status", "status": "Failure", "code": 410, "metadata": {}}
    assert check_object(status, method="DELETE", url=U) is status
    event = json.loads(json.dumps({"type": "ERROR", "object": status}))
    assert check_watch_event(event, url=U)["object"]["code"] == 410


def test_claim_spec_devices_is_an_object() -> None:
    # ResourceSlice spec.devices is an array of devices; ResourceClaim spec.devices an object.
    claim = {"metadata": {"name": "c"}, "spec": {"devices": {"requests": [{"name": "req"}]}}}
    assert check_object(claim, method="GET", url=U) is claim
    with pytest.raises(BadBodyError, match="expected an array or an object"):
        check_object({"metadata": {}, "spec": {"devices": "x"}}, method="GET", url=U)
