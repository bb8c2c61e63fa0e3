"""`just fuzz --fast` as part of the suite: every attack of bench/fuzz.py, at a small scale,
against a kubelet plugin in a child process; the run must end with no crash, no growth over the
thresholds and every server alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fuzz_fast_subset_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fuzz.py"), "--fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    for attack in (
        "unknown frame types",
        "garbage bytes",
        "many idle connections",
        "slowloris",
        "many concurrent requests",
        "mid-request disconnects",
        "abandoned 4 MiB streams",
        "oversized messages",
        "malformed protobuf",
        "fd exhaustion",
    ):
        assert attack in out
    assert "0 tracebacks" in out
    assert "fuzz: no crash, no unbounded growth, all alive" in out
