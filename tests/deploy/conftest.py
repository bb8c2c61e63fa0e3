"""Fixtures for the deploy tests: the helm binary (built from hack/tools/helm/go.mod into
~/.cache/dracpu/tools by ``hack/tools/build.sh`` when missing) and the chart renderer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.chart import REPO_ROOT, Chart


@pytest.fixture(scope="session")
def chart() -> Chart:
    """The chart with a helm binary; builds helm first when the cache lacks it (minutes)."""
    done = subprocess.run(
        [str(REPO_ROOT / "hack/tools/build.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"hack/tools/build.sh failed:\n{done.stderr}")
    return Chart(helm=Path(done.stdout.strip()) / "helm")
