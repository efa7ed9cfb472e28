"""Secret files are 0600 from the first byte, replaced atomically, and `exclusive` never replaces one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.private_files import is_private, make_private_dir, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_private(tmp_path / "deep" / "token", "s3cret")
    finally:
        os.umask(old)
    assert _mode(path) == 0o600 and is_private(path)
    assert path.read_text() == "s3cret"


def test_replacing_a_world_readable_file_narrows_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert _mode(path) == 0o600 and path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temp file left behind


def test_exclusive_never_replaces_a_secret(tmp_path: Path) -> None:
    path = write_private(tmp_path / "admin-token", "first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(path, "second", exclusive=True)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]


def test_private_dir_is_0700(tmp_path: Path) -> None:
    assert _mode(make_private_dir(tmp_path / "ca")) == 0o700
