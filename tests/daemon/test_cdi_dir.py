"""The two drivers' CDI specs share one directory through SpecDir: each touches only its own.

CPU specs (``dra.k8s.io-cpu_claim-*``) and memory specs (``dra.k8s.io-memory_claim-*``) are
reconciled separately at start; neither may remove or rewrite the other's, and both rewrite a
spec whose values match but whose document was changed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dracpu.cdi import CdiDir, CdiError
from dracpu.core.cpuset import CpuSet
from dracpu.memory_cdi import MemoryCdiDir

UID_A = "0b6f6a7e-0000-4000-8000-00000000000a"
UID_B = "0b6f6a7e-0000-4000-8000-00000000000b"
ENV = ("DRAMEMORY_X_NUMA=0", "DRAMEMORY_X_BYTES=1073741824")


def test_each_driver_reconciles_only_its_own_specs(tmp_path: Path) -> None:
    cpu, memory = CdiDir(tmp_path), MemoryCdiDir(tmp_path)
    cpu.write(UID_A, CpuSet.of([2, 3]))
    memory.write(UID_B, ENV)
    assert cpu.read_all() == {UID_A: CpuSet.of([2, 3])}
    assert memory.read_all() == {UID_B: ENV}
    # Memory holds nothing: its spec goes, the CPU spec stays.
    assert memory.reconcile({}).removed == (UID_B,)
    assert cpu.read_all() == {UID_A: CpuSet.of([2, 3])}
    assert memory.read_all() == {}
    # And the other way round.
    memory.write(UID_B, ENV)
    assert cpu.reconcile({}).removed == (UID_A,)
    assert memory.read_all() == {UID_B: ENV}


def test_a_spec_edited_by_hand_is_rewritten_even_when_its_values_match(tmp_path: Path) -> None:
    memory = MemoryCdiDir(tmp_path)
    path = memory.write(UID_B, ENV)
    doc = json.loads(path.read_bytes())
    doc["devices"][0]["containerEdits"]["mounts"] = [{"hostPath": "/etc", "containerPath": "/x"}]
    path.write_text(json.dumps(doc))
    assert memory.read_all() == {UID_B: ENV}
    assert memory.reconcile({UID_B: ENV}).written == (UID_B,)
    assert "mounts" not in path.read_text()
    assert memory.reconcile({UID_B: ENV}).written == ()


def test_stray_temp_files_of_a_crashed_write_are_removed_once(tmp_path: Path) -> None:
    (tmp_path / "dracpu-spec.abc123.tmp").write_text("{")
    (tmp_path / "spec.other-writer.tmp").write_text("{")  # the CDI library's: not ours
    got = MemoryCdiDir(tmp_path).reconcile({})
    assert got.strays == ("dracpu-spec.abc123.tmp",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.other-writer.tmp"]
    assert CdiDir(tmp_path).reconcile({}).strays == ()


def test_a_uid_that_cannot_name_a_file_is_refused_by_both(tmp_path: Path) -> None:
    for spec_dir in (CdiDir(tmp_path), MemoryCdiDir(tmp_path)):
        with pytest.raises(CdiError, match=r"'\.\./x'"):
            spec_dir.path("../x")
