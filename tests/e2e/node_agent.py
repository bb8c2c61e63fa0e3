"""Retired: the Python kubelet stand-in is gone; the rig runs a real kubelet (docs/e2e.md).

Only the two helpers other e2e modules imported from here are left, re-exported from
:mod:`tests.e2e.kube`; import them from there. Remove this module once nothing imports it.
"""

from __future__ import annotations

from tests.e2e.kube import kube_client, wait_for

__all__ = ["kube_client", "wait_for"]
