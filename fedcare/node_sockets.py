"""The node's private folders (the socket that wakes its warm executor, each task child's temp folder), and
the sweep of folders whose process was killed (SIGKILL leaves no chance to remove them; the chaos soak counts
them as leftovers)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "fcnode-"  # short: the socket path inside must fit AF_UNIX's 108 bytes, also under a long TMPDIR
log = logging.getLogger("fedcare.node")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_socket_dirs(*, root: Path | None = None) -> list[Path]:
    """Remove this user's node socket folders whose node process is gone; the folders removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid_text = path.name.removeprefix(PREFIX).split("-", 1)[0]
        try:
            if not pid_text.isdigit() or path.lstat().st_uid != os.getuid() or not path.is_dir():
                continue
        except OSError:
            continue
        if not _alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by node process %s that was killed", path, pid_text)
    return removed


def socket_dir(*, root: Path | None = None) -> tempfile.TemporaryDirectory[str]:
    """A private (0700) folder named for this process, so a later node can tell a killed node's folder."""
    sweep_stale_socket_dirs(root=root)
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=root)


def task_temp_dir(*, root: Path | None = None) -> str:
    """A temp folder for one forked task child, named for the executor that removes it when the child ends.

    Flower unpacks each message's app into a `tempfile.TemporaryDirectory`; a child killed meanwhile (timeout,
    SIGKILL) cannot remove it. Pointing the child's TMPDIR here lets its parent remove whatever it left, and
    the next node's sweep covers a parent that was killed too."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-task-", dir=root)
