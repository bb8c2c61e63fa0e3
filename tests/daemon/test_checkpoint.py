"""The checkpoint: round trip, durable replace, corrupt files kept aside, newer versions refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dracpu.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointStore,
    CheckpointVersionError,
    encode,
)

BODY = {"claims": {"u1": {"cpus": "2-3", "namespace": "ns", "name": "c"}}, "n": 1}


def test_absent_then_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    assert store.load().status == "absent"
    store.write(BODY)
    loaded = store.load()
    assert loaded.status == "loaded"
    assert loaded.body == BODY
    assert store.writes == 1
    # Nothing but the checkpoint is left in the directory (the temp file was renamed).
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [CHECKPOINT_FILE]


def test_rewrite_replaces(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, durable=False)
    store.write(BODY)
    store.write({"claims": {}})
    assert store.load().body == {"claims": {}}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON"),
        (b'{"format": "dracpu-checkpoint"', "not JSON"),
        (b"[1, 2]", "not a dracpu-checkpoint file"),
        (b'{"format": "x", "version": 1}', "not a dracpu-checkpoint file"),
        (b'{"format": "dracpu-checkpoint", "version": "1"}', "bad format version"),
        (b'{"format": "dracpu-checkpoint", "version": 1, "sha256": "x"}', "no body"),
        (b"\xff\xfe", "not JSON"),
    ],
    ids=["empty", "truncated", "list", "foreign", "version-string", "no-body", "binary"],
)
def test_corrupt_is_kept_aside(tmp_path: Path, content: bytes, reason: str) -> None:
    store = CheckpointStore(tmp_path)
    store.path.write_bytes(content)
    loaded = store.load()
    assert loaded.status == "corrupt"
    assert reason in loaded.reason
    assert str(store.path) in loaded.reason
    assert loaded.kept_aside == tmp_path / f"{CHECKPOINT_FILE}.corrupt-0"
    assert loaded.kept_aside.read_bytes() == content
    assert not store.path.exists()
    # The next start finds no checkpoint, and a second bad file does not overwrite the first.
    assert store.load().status == "absent"
    store.path.write_bytes(b"junk")
    assert store.load().kept_aside == tmp_path / f"{CHECKPOINT_FILE}.corrupt-1"


def test_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write(BODY)
    data = store.path.read_bytes().replace(b"2-3", b"2-4")
    store.path.write_bytes(data)
    loaded = store.load()
    assert loaded.status == "corrupt"
    assert "checksum mismatch" in loaded.reason


def test_newer_version_refuses_and_leaves_the_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    doc = json.loads(encode(BODY))
    doc["version"] = FORMAT_VERSION + 1
    raw = json.dumps(doc).encode()
    store.path.write_bytes(raw)
    with pytest.raises(CheckpointVersionError, match="newer dracpu") as info:
        store.load()
    assert str(store.path) in str(info.value)
    assert store.path.read_bytes() == raw


def test_unwritable_state_dir_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = CheckpointStore(blocker / "state")
    with pytest.raises(CheckpointError, match="cannot write") as info:
        store.write(BODY)
    assert str(store.path) in str(info.value)


def test_directory_in_place_of_the_file_is_corrupt(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.path.mkdir()
    loaded = store.load()
    assert loaded.status == "corrupt"
    assert loaded.kept_aside is not None
    assert loaded.kept_aside.is_dir()
