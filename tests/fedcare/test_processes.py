"""ProcessGroup (fedcare/processes.py): nothing it started outlives it, not even an orphaned grandchild."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from fedcare.processes import ProcessGroup

ORPHAN = """
import os, sys, time
if os.fork() == 0:  # the grandchild: a warm executor's ClientApp whose parent is SIGKILLed
    time.sleep(60)
    os._exit(0)
open(sys.argv[1], "w").write("started")
os._exit(0)  # the parent dies first: the grandchild is reparented, out of any tree `stop` walks
"""


def test_an_orphaned_grandchild_escapes_stop_and_is_reaped_by_its_session(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path / "group")
    group.workdir.mkdir()
    marker = tmp_path / "started"
    proc = group.spawn("forker", [sys.executable, "-c", ORPHAN, str(marker)], env=dict(os.environ))
    proc.popen.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not (orphans := group.session_members()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists() and len(orphans) == 1
    group.stop(grace=2)
    assert orphans[0].is_running()  # stop knows only the trees of its processes
    assert group.reap_sessions(grace=5) == [orphans[0].pid]
    assert not orphans[0].is_running() or orphans[0].status() == psutil.STATUS_ZOMBIE
    assert group.session_members() == []
