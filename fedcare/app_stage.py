"""A copy of the Flower app holding only what its FAB may contain, for `flwr run` to build the FAB from.

Flower 1.39's `flwr run DIR` walks every file under DIR, resolving each path, before it applies the app's
`fab-include` patterns. Run from a checkout, DIR holds the virtualenv and `.git` too: 4.5 of the 6.4 s that
`flwr run` took here went to that walk (py-spy), on every run of the demo, the tests and a coordinator.
The stage holds `pyproject.toml` and the top-level entries the include patterns name (without bytecode);
Flower then applies the same patterns to it, so the FAB is built from the same files.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

FAB_CONFIG = "pyproject.toml"


def fab_roots(app_dir: Path) -> list[str] | None:
    """The top-level files and folders the app's `fab-include` patterns reach; None when it sets none
    (Flower then takes every file, so only the whole folder will do)."""
    config = tomllib.loads((Path(app_dir) / FAB_CONFIG).read_text())
    patterns = config.get("tool", {}).get("flwr", {}).get("app", {}).get("fab-include")
    if not patterns:
        return None
    roots = {pattern.strip("/").split("/", 1)[0] for pattern in patterns}
    if any(any(c in root for c in "*?[") for root in roots):
        return None  # a wildcard at the top level may reach anything
    return sorted(roots)


def stage_app(app_dir: Path, *, into: Path) -> Path:
    """`into`, replaced by a copy of `app_dir`'s FAB candidates; `app_dir` itself when it cannot be narrowed."""
    roots = fab_roots(app_dir)
    if roots is None:
        return Path(app_dir)
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    shutil.copy2(Path(app_dir) / FAB_CONFIG, into / FAB_CONFIG)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for root in roots:
        source = Path(app_dir) / root
        if source.is_dir():
            shutil.copytree(source, into / root, ignore=skip, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, into / root)
    return into
