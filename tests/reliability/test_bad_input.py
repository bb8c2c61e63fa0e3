"""Bad input never crashes dracpu: hypothesis over the config file and flags, opaque claim
parameters, allocation results and ``DRA_CPUSET_*`` env entries. Each gives a value or one
:class:`DracpuError` subclass whose message is one bounded line; the node machine turns any
parsed claim into a per-claim outcome, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dracpu.core import node
from dracpu.core.cdi import CpusetEnvError, parse_env
from dracpu.core.claims import Claim, ClaimError, ClaimRef, parse_claim, parse_cpu_config
from dracpu.daemon.config import FIELDS, ConfigError, load_file, resolve
from dracpu.errors import DracpuError
from tests.support.topologies import make_topology

MESSAGE_LIMIT = 4096
"""No error message, whatever the input, is longer than this (a bounded log line)."""

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "0-3", "1e100", "-4", "NaN", "/abs", "rel", "grouped", "spread"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from([f.key for f in FIELDS] + ["apiVersion", "sysfsOverlay", "STATEDIR", "x"])


T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def attempt(call: Callable[[], T], kind: type[E]) -> T | E:
    """The value of ``call()``, or the ``kind`` exception it raised (any other propagates)."""
    try:
        return call()
    except kind as exc:
        return exc


def bounded(exc: Exception) -> None:
    text = str(exc)
    assert text
    assert len(text) <= MESSAGE_LIMIT, len(text)
    assert "\n" not in text.strip() or isinstance(exc, ConfigError)  # YAML marks span lines.


@SETTINGS
@given(doc=st.dictionaries(KEYS | st.text(max_size=10), JSON, max_size=6))
def test_config_file_values(tmp_path_factory: Any, doc: dict[str, Any]) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    loaded = attempt(lambda: load_file(path), ConfigError)
    if isinstance(loaded, ConfigError):
        bounded(loaded)
        assert str(path) in str(loaded)
        return
    for value in loaded.values():
        assert not (isinstance(value, float) and not math.isfinite(value))


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
@example("? [1, 2]\n: x\n")  # A non-string key.
@example("\x1f")  # A control character (the YAML reader refuses it).
@example("releaseGracePeriod: .nan\n")
@example("releaseGracePeriod: 1" + "0" * 5000)  # An int too long to convert.
@example("a: &a [x, x]\nb: [*a, *a]\n")  # Aliases.
@example("kubeconfig: " + "[" * 200 + "]" * 200)  # Deep nesting.
def test_config_file_text(tmp_path_factory: Any, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "config.yaml"
    path.write_text(text)
    got = attempt(lambda: load_file(path), ConfigError)
    if isinstance(got, ConfigError):
        bounded(got)


def test_config_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    names = "abcdefgh"
    levels = ["&a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&{names[i]} [" + ", ".join([f"*{names[i - 1]}"] * 9) + "]" for i in range(1, 8)]
    path = tmp_path / "config.yaml"
    path.write_text("kubeconfig: [" + ", ".join(levels) + "]\n")  # 9**8 strings if expanded.
    got = attempt(lambda: load_file(path), ConfigError)
    assert isinstance(got, ConfigError), "an alias bomb was accepted as a kubeconfig path"
    bounded(got)
    assert "must be a string" in str(got)


def test_config_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_file(path)


@SETTINGS
@given(flags=st.dictionaries(st.sampled_from([f.attr for f in FIELDS]), SCALARS, max_size=5))
@example({"release_grace_period": "nan"})
@example({"release_grace_period": "1e400"})
def test_flag_values(flags: dict[str, Any]) -> None:
    raw = {k: v if isinstance(v, str) else str(v) for k, v in flags.items()}
    config = attempt(lambda: resolve(raw, None), ConfigError)
    if isinstance(config, ConfigError):
        bounded(config)
        return
    assert math.isfinite(config.release_grace_period)


@SETTINGS
@given(parameters=JSON)
@example({"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "0-99999999"}})
@example({"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "3-1"}})
@example({"apiVersion": "v1alpha1", "cpuConfig": {"strategy": ["packed"]}})
@example({"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "1" * 5000}})
def test_opaque_parameters(parameters: Any) -> None:
    got = attempt(lambda: parse_cpu_config(parameters, claim="ns/c", request="req"), ClaimError)
    if isinstance(got, ClaimError):
        bounded(got)
        assert "ns/c" in str(got)


POOL = "node-a"
TOPOLOGY = make_topology(2, 1, 4, 2)
STATE = node.NodeState.initial(TOPOLOGY, node.NodeConfig(pool=POOL))
QUANTITIES = (
    st.sampled_from(
        [
            *("1e100", "-4", "NaN", "0", "1e30", "1500m", "4Ki", "2", "1", " 3 ", "Inf"),
            *("9" * 5000, "1e" + "0" * 5000 + "1", "0x10", "1E3", "+2", ".5", "2.0", "1" * 21),
        ]
    )
    | st.integers(-5, 40)
    | st.text(max_size=8)
    | SCALARS
)
DEVICES = st.sampled_from(
    ["cpudevnuma000", "cpudevnuma001", "cpudevnuma999", "cpudev000", "cpudevsocket000", "", "x"]
)


@st.composite
def results(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)  # Not even an object.
    result: dict[str, Any] = {
        "request": draw(st.sampled_from(["req", "a", "", "r/sub"]) | SCALARS),
        "driver": draw(st.sampled_from(["dra.cpu", "dra.cpu", "gpu.example.com", ""])),
        "pool": draw(st.sampled_from([POOL, POOL, "node-b", ""]) | SCALARS),
        "device": draw(DEVICES | SCALARS),
    }
    if draw(st.booleans()):
        result["consumedCapacity"] = draw(st.fixed_dictionaries({"dra.cpu/cpu": QUANTITIES}) | JSON)
    if draw(st.booleans()):
        result["shareID"] = draw(SCALARS)
    return result


@st.composite
def claims(draw: st.DrawFn, uid: str) -> Any:
    devices: dict[str, Any] = {"results": draw(st.lists(results(), max_size=4) | JSON)}
    if draw(st.booleans()):
        devices["config"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "source": st.sampled_from(["FromClaim", "FromClass"]) | SCALARS,
                        "requests": st.lists(st.sampled_from(["req", "a"]), max_size=2) | JSON,
                        "opaque": st.fixed_dictionaries(
                            {"driver": st.just("dra.cpu") | SCALARS, "parameters": JSON}
                        )
                        | JSON,
                    }
                ),
                max_size=2,
            )
            | JSON
        )
    status: Any = {"allocation": {"devices": devices}}
    if draw(st.booleans()):
        status["reservedFor"] = draw(JSON)
    if draw(st.integers(0, 9)) == 0:
        status = draw(JSON)
    return {"metadata": {"namespace": "ns", "name": f"c-{uid}", "uid": uid}, "status": status}


@SETTINGS
@given(
    objs=st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True).flatmap(
        lambda ids: st.tuples(*[claims(f"u{i}") for i in ids])
    )
)
def test_allocation_results_become_per_claim_outcomes(objs: tuple[Any, ...]) -> None:
    fetched: dict[str, Claim | str] = {}
    refs = []
    for obj in objs:
        uid = obj["metadata"]["uid"]
        refs.append(ClaimRef("ns", f"c-{uid}", uid))
        parsed = attempt(lambda obj=obj: parse_claim(obj, pool=POOL), ClaimError)
        if isinstance(parsed, ClaimError):
            bounded(parsed)
            assert uid in str(parsed)
        fetched[uid] = str(parsed) if isinstance(parsed, ClaimError) else parsed
    state, effects = node.step(STATE, node.Prepare(tuple(refs), fetched))
    (reply,) = [e for e in effects if isinstance(e, node.ReplyPrepare)]
    assert set(reply.results) == {r.uid for r in refs}
    held: list[int] = []
    for uid, outcome in reply.results.items():
        if isinstance(outcome, node.ClaimFailed):
            assert outcome.error
            assert len(outcome.error) <= MESSAGE_LIMIT
            assert uid not in state.claims
        else:
            assert isinstance(outcome, node.ClaimPrepared)
            # A claim with no result of ours is prepared with nothing (as upstream does).
            held.extend(state.claims[uid].cpus if uid in state.claims else ())
    assert len(held) == len(set(held))  # No CPU given twice.


ENTRIES = st.lists(
    st.sampled_from(
        ["DRA_CPUSET_u1=0-3", "DRA_CPUSET_u1=4", "DRA_CPUSET_=1", "DRA_CPUSET", "PATH=/"]
    )
    | st.builds(lambda k, v: f"DRA_CPUSET_{k}={v}", st.text(max_size=8), st.text(max_size=12))
    | st.builds(
        lambda v: f"DRA_CPUSET_u2={v}", st.sampled_from(["0-99999999", "1e3", "", "3-1", ","])
    )
    | st.text(max_size=20),
    max_size=6,
)


@SETTINGS
@given(env=ENTRIES)
@example(["DRA_CPUSET_\n="])  # A newline in the name: the message stays one line.
def test_cpuset_env_entries(env: list[str]) -> None:
    found = attempt(lambda: parse_env(env, origin="container c1"), CpusetEnvError)
    if isinstance(found, CpusetEnvError):
        bounded(found)
        assert "container c1" in str(found)
        return
    assert all(cpus for cpus in found.values())


def test_every_error_above_is_a_dracpu_error() -> None:
    for kind in (ConfigError, ClaimError, CpusetEnvError):
        assert issubclass(kind, DracpuError)


def test_absurd_quantities_fail_the_claim_alone() -> None:
    for quantity in ("1e100", "-4", "NaN", "0", "9" * 5000, "1e" + "0" * 5000 + "1", "1e30"):
        obj = {
            "metadata": {"namespace": "ns", "name": "c", "uid": "u1"},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {
                                "request": "req",
                                "driver": "dra.cpu",
                                "pool": POOL,
                                "device": "cpudevnuma000",
                                "consumedCapacity": {"dra.cpu/cpu": quantity},
                            }
                        ]
                    }
                }
            },
        }
        claim = attempt(lambda obj=obj: parse_claim(obj, pool=POOL), ClaimError)
        if isinstance(claim, ClaimError):
            bounded(claim)
            assert "ns/c" in str(claim)
            continue
        # Parsed (1e30 is a whole positive number): the node machine refuses it for the claim.
        _, effects = node.step(STATE, node.Prepare((claim.ref,), {"u1": claim}))
        (reply,) = [e for e in effects if isinstance(e, node.ReplyPrepare)]
        outcome = reply.results["u1"]
        assert isinstance(outcome, node.ClaimFailed), quantity
        bounded(DracpuError(outcome.error))
