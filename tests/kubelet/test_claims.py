"""Batch normalisation (pure): one result per requested claim, no strangers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dracpu.kubelet.claims import complete_results, fail_all
from dracpu.kubelet.handler import ClaimFailed, ClaimPrepared, ClaimRef

uids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=8)


@given(requested=st.lists(uids, unique=True), answered=st.lists(uids, unique=True))
def test_exactly_one_result_per_requested_claim(requested: list[str], answered: list[str]) -> None:
    claims = [ClaimRef("ns", f"n-{u}", u) for u in requested]
    results = {u: ClaimPrepared() for u in answered}

    complete, unknown = complete_results(claims, results, "NodePrepareResources")

    assert list(complete) == requested
    for uid in requested:
        if uid in answered:
            assert complete[uid] == ClaimPrepared()
        else:
            failed = complete[uid]
            assert isinstance(failed, ClaimFailed)
            assert f"ns/n-{uid}" in failed.error
            assert "NodePrepareResources" in failed.error
    assert unknown == sorted(set(answered) - set(requested))


def test_fail_all_names_every_claim() -> None:
    claims = [ClaimRef("a", "x", "1"), ClaimRef("b", "y", "2")]
    assert fail_all(claims, "boom") == {"1": ClaimFailed("boom"), "2": ClaimFailed("boom")}
