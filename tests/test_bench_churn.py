"""The logic of bench/bench_churn.py without the rig: quantiles read from dracpu's own /metrics
text, counters, the pod watch's bookkeeping and the leak report. (The bench itself needs the
rig and minutes; it is a recipe, `just bench-churn`.)"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import httpx

from dracpu.ops.metrics import DriverMetrics, Result

REPO = Path(__file__).resolve().parents[1]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_churn", REPO / "bench" / "bench_churn.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_churn", module)
    spec.loader.exec_module(module)
    return module


def test_quantiles_and_counters_from_dracpus_metrics_text() -> None:
    b = bench()
    m = DriverMetrics()
    for _ in range(90):
        m.record_prepare(Result.SUCCESS, 0.003, 1)  # bucket (0, 5 ms]
    for _ in range(10):
        m.record_prepare(Result.ERROR, 0.2)  # bucket (100, 250 ms]
    text = m.render().decode()
    name = "dra_cpu_prepare_claim_duration_seconds"
    assert math.isclose(b.histogram_quantile(text, name, 0.5), 0.005 * 50 / 90)
    assert math.isclose(b.histogram_quantile(text, name, 0.99), 0.1 + 0.15 * 9 / 10)
    assert math.isnan(b.histogram_quantile(text, "no_such_histogram", 0.5))
    assert b.counter(text, "dra_cpu_prepare_claims", result="success") == 90
    assert b.counter(text, "dra_cpu_prepare_claims", result="error") == 10
    assert b.pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert math.isnan(b.pct([], 0.5))


def test_pod_watch_records_start_done_and_delete_once() -> None:
    b = bench()
    with httpx.Client() as client:
        w = b.PodWatch(client, "ns")

    def event(kind: str, phase: str, state: str | None, rv: str) -> None:
        statuses = [{"state": {state: {}}}] if state else []
        obj = {
            "metadata": {"name": "p", "resourceVersion": rv},
            "spec": {"nodeName": "n"} if rv != "1" else {},
            "status": {"phase": phase, "containerStatuses": statuses},
        }
        assert w._event({"type": kind, "object": obj}) == rv

    event("ADDED", "Pending", None, "1")
    assert w.times("p").started == 0.0
    assert w.times("p").bound == 0.0
    event("MODIFIED", "Pending", "terminated", "2")
    started = w.times("p").started
    assert started > 0
    assert w.times("p").done == 0.0
    event("MODIFIED", "Succeeded", "terminated", "3")
    event("DELETED", "Succeeded", "terminated", "4")
    t = w.times("p")
    assert t.started == started
    assert t.deleted >= t.done >= started >= t.bound > 0
    assert t.phase == "Succeeded"


def test_leak_report_names_every_leak() -> None:
    b = bench()
    clean = b.Leaks([], [], "", [], [], [], False)
    assert clean.problems() == []
    dirty = b.Leaks(["dra.k8s.io-cpu_claim-u1.json"], ["u1"], "free 0 != 1", [], ["c"], [], True)
    text = " ".join(dirty.problems())
    for word in ("cdi_specs", "checkpoint_claims", "cpus held", "claims_in_api", "ResourceSlices"):
        assert word in text
