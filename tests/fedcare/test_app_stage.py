"""The app stage `flwr run` builds the FAB from (fedcare/app_stage.py): Flower's own `flwr build` makes the
same bundle from it as from the checkout, and the stage leaves the checkout's virtualenv behind."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from fedcare.app_stage import fab_roots, stage_app
from fedcare.processes import console_script

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"
fab-include = ["pkg/**/*.py", "LICENSE"]
fab-exclude = ["pkg/secret/**"]

[tool.flwr.app.components]
serverapp = "pkg.server:app"
clientapp = "pkg.client:app"
"""


def _fab_members(app: Path, out: Path) -> dict[str, bytes]:
    subprocess.run([console_script("flwr"), "build", "--app", str(app)], cwd=out, check=True, capture_output=True)
    (fab,) = out.glob("*.fab")
    with zipfile.ZipFile(fab) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def test_flower_builds_the_same_bundle_from_the_stage_as_from_the_app(tmp_path: Path) -> None:
    app = tmp_path / "app"
    for name, text in {
        "pyproject.toml": PYPROJECT,
        "LICENSE": "ours",
        "README.md": "not in the bundle",
        "pkg/__init__.py": "",
        "pkg/server.py": "app = None\n",
        "pkg/client.py": "app = None\n",
        "pkg/__pycache__/server.cpython-311.pyc": "bytecode",
        "pkg/secret/keys.py": "SECRET = 1\n",
        ".venv/lib/site.py": "a virtualenv's file\n",
    }.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    assert fab_roots(app) == ["LICENSE", "pkg"]

    stage = stage_app(app, into=tmp_path / "stage")
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert staged == ["LICENSE", "pkg/__init__.py", "pkg/client.py", "pkg/secret/keys.py", "pkg/server.py"] + [
        "pyproject.toml"
    ]

    (tmp_path / "from-app").mkdir()
    (tmp_path / "from-stage").mkdir()
    assert _fab_members(stage, tmp_path / "from-stage") == _fab_members(app, tmp_path / "from-app")


def test_the_stage_is_made_afresh_and_an_app_without_include_patterns_is_used_as_it_is(tmp_path: Path) -> None:
    stage = stage_app(REPO, into=tmp_path / "stage")
    (stage / "server" / "left-over.py").write_text("from an earlier stage\n")
    stage = stage_app(REPO, into=tmp_path / "stage")
    assert not (stage / "server" / "left-over.py").exists()
    assert sorted(p.name for p in stage.iterdir()) == ["client", "common", "pyproject.toml", "server"]
    assert not list(stage.rglob("__pycache__"))

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pyproject.toml").write_text(PYPROJECT.replace('fab-include = ["pkg/**/*.py", "LICENSE"]\n', ""))
    assert stage_app(bare, into=tmp_path / "unused") == bare and not (tmp_path / "unused").exists()
