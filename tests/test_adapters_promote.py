"""promote / rollback switch the `current` pointer atomically and keep a history."""

from __future__ import annotations

import json

import pytest

from bot import adapters


def _version(root, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / adapters.ADAPTER_FILE).write_bytes(b"GGUF")
    (root / name / adapters.META_FILE).write_text(json.dumps({"version": name}))


def test_promote_then_rollback_restores_previous_versions(tmp_path):
    for v in ("v1", "v2", "v3"):
        _version(tmp_path, v)
    adapters.promote(tmp_path, "v1")
    adapters.promote(tmp_path, "v2")
    adapters.promote(tmp_path, "v3")
    assert adapters.current(tmp_path).version == "v3"
    assert adapters.rollback(tmp_path) == "v2"
    assert adapters.current(tmp_path).version == "v2"
    assert adapters.rollback(tmp_path) == "v1"
    assert adapters.rollback(tmp_path) == "base"
    assert adapters.current(tmp_path) is None
    with pytest.raises(adapters.AdapterError, match="nothing to roll back"):
        adapters.rollback(tmp_path)
    actions = [(h["action"], h["from"], h["to"]) for h in adapters.history(tmp_path)]
    assert actions[:3] == [("promote", "base", "v1"), ("promote", "v1", "v2"), ("promote", "v2", "v3")]
    assert actions[3:] == [("rollback", "v3", "v2"), ("rollback", "v2", "v1"), ("rollback", "v1", "base")]


def test_rollback_skips_a_deleted_version(tmp_path):
    for v in ("v1", "v2", "v3"):
        _version(tmp_path, v)
    for v in ("v1", "v2", "v3"):
        adapters.promote(tmp_path, v)
    (tmp_path / "v2" / adapters.ADAPTER_FILE).unlink()
    assert adapters.rollback(tmp_path) == "v1"


def test_promote_rejects_unknown_or_malformed_versions(tmp_path):
    _version(tmp_path, "v1")
    with pytest.raises(adapters.AdapterError, match=r"no adapter v7 .*versions: v1"):
        adapters.promote(tmp_path, "v7")
    with pytest.raises(adapters.AdapterError, match="not a version name"):
        adapters.promote(tmp_path, "../etc")
    assert not (tmp_path / adapters.POINTER).exists()  # nothing half-done


def test_promote_base_and_pointer_is_whole_after_each_switch(tmp_path):
    _version(tmp_path, "v1")
    adapters.promote(tmp_path, "v1")
    adapters.promote(tmp_path, "base")
    assert (tmp_path / adapters.POINTER).read_text() == "base\n"
    assert adapters.rollback(tmp_path) == "v1"
    assert not list(tmp_path.glob(".current-*"))  # temp files were renamed into place


def test_history_survives_a_torn_line(tmp_path):
    _version(tmp_path, "v1")
    adapters.promote(tmp_path, "v1")
    with (tmp_path / adapters.HISTORY_FILE).open("a") as f:
        f.write('{"action": "prom')  # a crash mid-write
    assert len(adapters.history(tmp_path)) == 1
    assert adapters.rollback(tmp_path) == "base"
    assert [h["action"] for h in adapters.history(tmp_path)] == ["promote", "rollback"]  # the new line is whole
