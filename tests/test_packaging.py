"""What each side receives: the FAB that `flwr run` ships, and what a hospital's install must hold.

The FAB is built with Flower's own builder from this checkout, exactly as `flwr run` builds it, and
then imported on its own: a module the ServerApp or ClientApp needs but the FAB lacks fails here,
not at a hospital.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fedcare.app_stage import stage_app

REPO = Path(__file__).resolve().parents[1]
# What the `coordinator` extra installs; a hospital's node must run without any of it.
COORDINATOR_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "prometheus_client")


def _run_isolated(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` with this checkout removed from sys.path, so only what `cwd` holds can be imported."""
    prelude = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ({str(REPO)!r}, {str(REPO) + "/"!r})]
        sys.path.insert(0, {str(cwd)!r})
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0", "HOME": str(cwd)},
    )


def test_the_fab_holds_the_apps_and_no_budget_service_code(tmp_path: Path) -> None:
    # Built as fedcare's `flwr run` builds it: from the app's stage (tests/fedcare/test_app_stage.py: the same FAB)
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(stage_app(REPO, into=tmp_path / "stage"))))
    names = fab.namelist()
    assert "server/app.py" in names and "client/app.py" in names
    assert not [n for n in names if n.startswith("server/budget/")], "the budget service must not ship to hospitals"
    assert not [n for n in names if n.startswith(("fedcare/", "tests/", "bench/", "deploy/"))]

    fab.extractall(tmp_path / "fab")
    done = _run_isolated(
        """
        import importlib, pathlib
        import server.app, client.app
        # every module of the apps' packages imports from the FAB alone
        for path in sorted(pathlib.Path('.').glob('[sc]*/**/*.py')):
            importlib.import_module('.'.join(path.with_suffix('').parts).removesuffix('.__init__'))
        assert server.app.__file__.startswith(sys.path[0]), server.app.__file__
        print('imported', server.app.__file__)
        """,
        cwd=tmp_path / "fab",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(tmp_path / "fab") in done.stdout


def test_a_hospitals_node_needs_nothing_from_the_coordinator_extra(tmp_path: Path) -> None:
    blocked = ", ".join(repr(name) for name in COORDINATOR_ONLY)
    done = _run_isolated(
        f"""
        import importlib, importlib.abc
        sys.path.insert(0, {str(REPO)!r})
        BLOCKED = {{{blocked}}}

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'{{name}} belongs to the coordinator extra')

        sys.meta_path.insert(0, Refuse())
        for module in ('client.app', 'client.local_round', 'client.secagg_client', 'fedcare.cli'):
            importlib.import_module(module)
        print('ok')
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
