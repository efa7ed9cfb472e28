"""SecAgg+ run settings are refused before anything starts, with a message that says what to change."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.settings import RunSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def _settings(**overrides: object) -> RunSettings:
    return RunSettings.from_run_config({"schema-path": "schema.json", "privacy-mode": "secagg", **overrides})


def test_the_shipped_defaults_are_valid_for_secagg() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    settings = RunSettings.from_run_config({**config, "schema-path": "schema.json", "privacy-mode": "secagg"})
    assert (settings.num_shares, settings.reconstruction_threshold) == (3, 2)
    assert settings.quantization_range == 2**22 and settings.clipping_range == 8.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-shares": 2}, "num-shares"),
        ({"num-shares": 3, "reconstruction-threshold": 3}, "must be below num-shares"),
        ({"reconstruction-threshold": 1}, "reconstruction-threshold"),
        ({"min-nodes": 1}, "at least 2 hospitals"),
        ({"num-shares": 5, "reconstruction-threshold": 3, "min-nodes": 2}, "above min-nodes"),
        ({"quantization-range": 2**30, "min-nodes": 4}, "wraps around"),
        ({"quantization-range": 2**31}, "quantization-range"),
        ({"clipping-range": 0.0}, "clipping-range"),
        ({"max-weight": -1.0}, "max-weight"),
        ({"secagg-timeout": 0}, "secagg-timeout"),
    ],
)
def test_invalid_secagg_settings_are_refused_with_the_setting_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _settings(**overrides)


def test_all_secagg_problems_are_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        _settings(**{"num-shares": 3, "reconstruction-threshold": 3, "min-nodes": 2})
    assert "below num-shares" in str(info.value) and "above min-nodes" in str(info.value)


def test_secagg_limits_do_not_apply_to_the_other_modes() -> None:
    settings = RunSettings.from_run_config(
        {"schema-path": "schema.json", "min-nodes": 1, "reconstruction-threshold": 3}
    )
    assert settings.privacy_mode == "plain"
