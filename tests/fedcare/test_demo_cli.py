"""`fedcare demo`'s options that are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli import app


def test_int8_compression_in_he_mode_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--compress", "int8", "--out", str(tmp_path / "demo")])  # he: the default
    assert result.exit_code == 2
    assert "does not apply to --mode he" in " ".join(result.output.split())
    assert not (tmp_path / "demo").exists()  # nothing written, nothing started
