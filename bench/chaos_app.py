"""A throwaway copy of the fedcare app whose ClientApp is `bench/chaos_client.py` (a faulty hospital on request).

The copy holds the same server/, client/ and common/ code; only `clientapp` points elsewhere, so a run
submitted from it is a fedcare run in every other respect (and `resume_run` resubmits the same copy).
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = 'clientapp = "client.app:app"'


def chaos_app(target: Path) -> Path:
    """Write the copy into `target` (made if missing) and return it."""
    target.mkdir(parents=True, exist_ok=True)
    for package in ("server", "client", "common"):
        shutil.copytree(
            REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    shutil.copy(Path(__file__).with_name("chaos_client.py"), target / "chaos_client.py")
    pyproject = (REPO / "pyproject.toml").read_text()
    if CLIENT not in pyproject:
        raise RuntimeError(f"pyproject.toml no longer says {CLIENT!r}; update bench/chaos_app.py")
    pyproject = pyproject.replace(CLIENT, 'clientapp = "chaos_client:app"')
    pyproject = pyproject.replace("fab-include = [", 'fab-include = ["chaos_client.py", ', 1)
    (target / "pyproject.toml").write_text(pyproject)
    return target
