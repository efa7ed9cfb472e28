"""Atomic JSON writes: the old file or the new one, and no temp files left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.atomic import append_durably, write_bytes_atomic, write_json_atomic


def test_write_creates_the_file_and_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.json"
    write_json_atomic(path, {"status": "running", "rounds": []})
    assert json.loads(path.read_text()) == {"status": "running", "rounds": []}
    assert os.listdir(path.parent) == ["results.json"]


def test_a_second_write_replaces_the_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"round": 1, "long": "x" * 1000})
    write_json_atomic(path, {"round": 2})
    assert json.loads(path.read_text()) == {"round": 2}
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_failed_replace_keeps_the_old_file_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"round": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("common.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b'{"round": 2}')
    assert json.loads(path.read_text()) == {"round": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_an_unserialisable_payload_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"round": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"round": object()})
    assert json.loads(path.read_text()) == {"round": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_appends_add_to_the_end_and_create_the_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    append_durably(path, b'{"n": 1}\n')
    append_durably(path, b'{"n": 2}\n')
    assert path.read_bytes() == b'{"n": 1}\n{"n": 2}\n'
    assert os.listdir(tmp_path) == ["outbox.jsonl"]
