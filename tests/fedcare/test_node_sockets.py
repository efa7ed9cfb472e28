"""A killed node's socket folder is removed by the next node; a live node's and other folders are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedcare.node_sockets import socket_dir, sweep_stale_socket_dirs


def test_a_killed_nodes_folder_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f"fcnode-{dead_pid}-abc").mkdir()
    (tmp_path / "fcnode-notapid-abc").mkdir()  # not ours by its name: kept
    (tmp_path / "other-folder").mkdir()
    with socket_dir(root=tmp_path) as mine:  # sweeps first
        assert Path(mine).name.startswith("fcnode-")
        assert Path(mine).stat().st_mode & 0o777 == 0o700
        assert not (tmp_path / f"fcnode-{dead_pid}-abc").exists()
        assert sweep_stale_socket_dirs(root=tmp_path) == []  # this process is alive: its folder stays
        assert Path(mine).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fcnode-notapid-abc", "other-folder"]
