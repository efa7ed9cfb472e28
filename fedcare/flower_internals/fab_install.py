"""A ClientApp child installs the run's FAB once per node, not once per message.

Flower's `run_clientapp` calls `install_from_fab(fab.content, skip_prompt=True)` for every message: it unzips
the whole FAB into a temporary folder, checks every file against the FAB's manifest, and then, finding the
app folder for that FAB hash already there, throws it all away. With fedcare's 85-file app that was most
of a SecAgg+ key-exchange message (py-spy at load 6-11: 2-8 of a key stage's 2-9 samples in
`install_from_fab`, 0.1-0.8 s), and SecAgg+ pays it four times a round.

Here the first full install of a FAB (Flower's own, every hash checked) leaves a marker named by the FAB's
SHA-256, holding the folder it installed to. A later message whose FAB bytes have the same SHA-256, and whose
folder is still there, uses that folder: the same bytes would pass the same checks. Only a complete install
writes the marker (Flower itself accepts any existing folder of that name, even one left half-copied).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKERS = ".fedcare-verified"  # under Flower's app folder (FLWR_HOME/apps): one file per verified FAB hash


def _marker(fab: bytes) -> Path:
    from flwr.common.constant import APP_DIR
    from flwr.supercore.utils import get_flwr_home

    return get_flwr_home() / APP_DIR / MARKERS / hashlib.sha256(fab).hexdigest()


def installed_once(install: Callable[..., Path]) -> Callable[..., Path]:
    """`install` (Flower's `install_from_fab`), run only for a FAB not yet verified and installed here."""

    def install_or_reuse(fab_file: Any, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        if not isinstance(fab_file, bytes) or install_dir is not None or not skip_prompt:
            return install(fab_file, install_dir=install_dir, skip_prompt=skip_prompt)  # not run_clientapp's call
        marker = _marker(fab_file)
        try:
            installed = Path(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            installed = None
        if installed is not None and installed.is_dir():
            return installed
        path = install(fab_file, install_dir=None, skip_prompt=True)
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(f".{marker.name}.{os.getpid()}")
        partial.write_text(str(path), encoding="utf-8")
        os.replace(partial, marker)  # whole or absent: a sibling child reads no half-written path
        return path

    return install_or_reuse
