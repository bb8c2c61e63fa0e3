"""Fixtures for the deploy tests: the chart with a helm binary (built from
hack/tools/helm/go.mod into ~/.cache/dracpu/tools by ``hack/tools/build.sh`` when missing)."""

from __future__ import annotations

import pytest

from tests.deploy.chart import Chart, build_helm


@pytest.fixture(scope="session")
def chart() -> Chart:
    """The chart and helm; builds helm first when the cache lacks it (minutes)."""
    return Chart(helm=build_helm())
