"""Rendering the Helm chart with the real helm binary, for the deploy tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy/helm/dracpu"
MANIFESTS = REPO_ROOT / "deploy/dracpu.yaml"
# What `just manifests` renders: release dracpu in kube-system, the oldest supported Kubernetes.
TEMPLATE_ARGS = [
    "template",
    "dracpu",
    str(CHART_DIR),
    "--namespace",
    "kube-system",
    "--kube-version",
    "1.34.0",
]


def build_helm() -> Path:
    """The helm binary, built by ``hack/tools/build.sh`` when the cache lacks it (minutes)."""
    done = subprocess.run(
        [str(REPO_ROOT / "hack/tools/build.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"hack/tools/build.sh failed:\n{done.stderr}"
    return Path(done.stdout.strip()) / "helm"


@dataclass(frozen=True)
class Chart:
    """The chart plus the helm binary that renders and lints it."""

    helm: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm), *args], capture_output=True, text=True, check=False, timeout=120
        )

    def template_args(self, *sets: str) -> list[str]:
        """``helm template`` arguments for the chart with ``--set`` for each of ``sets``."""
        return [*TEMPLATE_ARGS, *(a for s in sets for a in ("--set", s))]

    def render(self, *sets: str) -> list[dict[str, Any]]:
        """The rendered objects, with ``--set`` for each of ``sets``; fails on a helm error."""
        done = self.run(*TEMPLATE_ARGS, *(a for s in sets for a in ("--set", s)))
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def render_error(self, *sets: str) -> str:
        """helm's error for values that must be refused."""
        done = self.run(*TEMPLATE_ARGS, *(a for s in sets for a in ("--set", s)))
        assert done.returncode != 0, f"helm accepted {sets}"
        return done.stderr


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]
