"""CDI specs: upstream's names and content, valid against the CDI JSON schema, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from dracpu.cdi import CdiDir, CdiError, device_id, spec_document, spec_file_name
from dracpu.core.cpuset import CpuSet

SCHEMA = json.loads((Path(__file__).parents[1] / "support" / "cdi_schema.json").read_text())
UID = "0b1c4a52-6f0e-4c2e-9d1a-3f3b2a1e9c77"


def validate(doc: object) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft7Validator)


def test_upstream_format() -> None:
    doc = spec_document(UID, CpuSet.parse("2-3,8"))
    assert doc == {
        "cdiVersion": "0.8.0",
        "kind": "dra.k8s.io/cpu",
        "devices": [
            {"name": f"claim-{UID}", "containerEdits": {"env": [f"DRA_CPUSET_{UID}=2-3,8"]}}
        ],
    }
    assert spec_file_name(UID) == f"dra.k8s.io-cpu_claim-{UID}.json"
    assert device_id(UID) == f"dra.k8s.io/cpu=claim-{UID}"
    validate(doc)


def test_schema_rejects_a_broken_spec() -> None:
    doc = spec_document(UID, CpuSet.parse("1"))
    del doc["devices"][0]["containerEdits"]
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


@pytest.mark.parametrize("uid", ["", "a/b", "-x", "x y", "a" * 200], ids=repr)
def test_bad_uid_is_refused(uid: str, tmp_path: Path) -> None:
    with pytest.raises(CdiError, match="claim UID"):
        CdiDir(tmp_path).write(uid, CpuSet.parse("1"))


def test_write_remove_and_read_back(tmp_path: Path) -> None:
    cdi = CdiDir(tmp_path / "cdi")
    path = cdi.write(UID, CpuSet.parse("4-7"))
    validate(json.loads(path.read_text()))
    assert path.stat().st_mode & 0o777 == 0o644
    assert cdi.read_all() == {UID: CpuSet.parse("4-7")}
    assert sorted(p.name for p in (tmp_path / "cdi").iterdir()) == [path.name]
    assert cdi.remove(UID) is True
    assert cdi.remove(UID) is False
    assert cdi.read_all() == {}


def test_reconcile_rewrites_missing_and_stale_and_removes_orphans(tmp_path: Path) -> None:
    cdi = CdiDir(tmp_path)
    foreign = tmp_path / "vendor.com-gpu.json"
    foreign.write_text("{}")
    cdi.write("orphan", CpuSet.parse("1"))
    cdi.write("stale", CpuSet.parse("2"))
    cdi.path("broken").write_text("not json")
    cdi.write("good", CpuSet.parse("5"))
    wanted = {"stale": CpuSet.parse("3"), "missing": CpuSet.parse("4"), "good": CpuSet.parse("5")}
    wanted["broken"] = CpuSet.parse("6")
    done = cdi.reconcile(wanted)
    assert done.removed == ("orphan",)
    assert done.written == ("broken", "missing", "stale")
    assert cdi.read_all() == wanted
    assert foreign.read_text() == "{}"  # not ours: never touched
    for uid in wanted:
        validate(json.loads(cdi.path(uid).read_text()))
    assert cdi.reconcile(wanted).written == ()


def test_unwritable_dir_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(CdiError, match="cannot write CDI spec") as info:
        CdiDir(blocker).write(UID, CpuSet.parse("1"))
    assert spec_file_name(UID) in str(info.value)
