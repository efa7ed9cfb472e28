"""A ClientApp child installs a run's FAB once per node (fedcare/flower_internals/fab_install.py), with Flower's
own checks, and reuses the verified folder for every later message of the same FAB bytes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import click
import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.cli.install import install_from_fab

from fedcare.flower_internals.fab_install import MARKERS, installed_once

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "{version}"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedcare"

[tool.flwr.app.components]
serverapp = "tinyapp:server"
clientapp = "tinyapp:client"

[tool.flwr.app.config]
rounds = 1
"""


def tiny_fab(tmp_path: Path, *, version: str = "1.0.0") -> bytes:
    app = tmp_path / f"app-{version}"
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT.format(version=version))
    (app / "tinyapp.py").write_text("server = client = None\n")
    return build_fab_from_disk(app)


@pytest.fixture
def flwr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


def counting(calls: list[bytes]):
    def install(fab_file, install_dir=None, skip_prompt=False):
        calls.append(fab_file)
        return install_from_fab(fab_file, install_dir=install_dir, skip_prompt=skip_prompt)

    return install


def test_the_first_message_installs_with_flowers_checks_and_later_ones_reuse_the_folder(tmp_path, flwr_home) -> None:
    fab, calls = tiny_fab(tmp_path), []
    install = installed_once(counting(calls))
    first = install(fab, skip_prompt=True)
    assert (first / "tinyapp.py").read_text() == "server = client = None\n"
    assert install(fab, skip_prompt=True) == first and install(fab, skip_prompt=True) == first
    assert len(calls) == 1  # Flower unzipped and hash-checked the FAB once
    other = tiny_fab(tmp_path, version="1.0.1")  # another FAB (a new run of a changed app): installed on its own
    assert install(other, skip_prompt=True) != first and len(calls) == 2
    assert len(list((flwr_home / "apps" / MARKERS).iterdir())) == 2


def test_a_folder_removed_since_is_installed_again(tmp_path, flwr_home) -> None:
    import shutil

    fab, calls = tiny_fab(tmp_path), []
    install = installed_once(counting(calls))
    shutil.rmtree(install(fab, skip_prompt=True))
    again = install(fab, skip_prompt=True)
    assert (again / "tinyapp.py").is_file() and len(calls) == 2


def test_a_fab_that_fails_flowers_hash_check_is_refused_every_time_and_leaves_no_marker(tmp_path, flwr_home) -> None:
    source = zipfile.ZipFile(io.BytesIO(tiny_fab(tmp_path)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as tampered:
        for item in source.infolist():
            data = source.read(item)
            tampered.writestr(item, b"server = client = 'evil'\n" if item.filename == "tinyapp.py" else data)
    install = installed_once(install_from_fab)
    for _ in range(2):
        with pytest.raises(click.ClickException, match="hashes"):
            install(out.getvalue(), skip_prompt=True)
    assert not (flwr_home / "apps" / MARKERS).exists()
