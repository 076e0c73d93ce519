"""The suite-wide var/ guard notices what a test would do to a demo's files."""

from __future__ import annotations

from tests.conftest import describe_change, snapshot_var


def test_guard_sees_creation_change_and_removal(tmp_path):
    var = tmp_path / "var"
    assert snapshot_var(var) is None
    var.mkdir()
    (var / "broadcaster.sqlite3").write_bytes(b"x")
    created = snapshot_var(var)
    assert describe_change(None, created) == "created var/ (broadcaster.sqlite3)"
    (var / "broadcaster.sqlite3").write_bytes(b"xy")
    (var / "broadcaster.sqlite3-wal").write_bytes(b"")
    change = describe_change(created, snapshot_var(var))
    assert change == "changed: broadcaster.sqlite3; added: broadcaster.sqlite3-wal"
    assert describe_change(snapshot_var(var), snapshot_var(var)) is None
