"""Run and node settings: one source of defaults, and names that say which HE context is meant."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.settings import NodeSettings, RunSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]
# Deliberately deployment-specific: every federation points it at its own schema file, so RunSettings
# has no default and requires it, while pyproject.toml must still list the key (as "") because Flower
# refuses a run-config override of a key the app does not declare.
DEPLOYMENT_SPECIFIC = {"schema-path"}


def _shipped_config() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _defaults() -> dict[str, object]:
    return {
        field.alias or name: field.default
        for name, field in RunSettings.model_fields.items()
        if not field.is_required()
    }


def test_pyproject_lists_exactly_the_run_settings() -> None:
    # Flower's fuse_dicts rejects an override key missing from [tool.flwr.app.config], so a RunSettings
    # field absent there could never be set; a key absent from RunSettings would be refused at start.
    aliases = {field.alias or name for name, field in RunSettings.model_fields.items()}
    assert set(_shipped_config()) == aliases


def test_pyproject_values_are_the_run_settings_defaults() -> None:
    shipped, defaults = _shipped_config(), _defaults()
    assert set(defaults) == set(shipped) - DEPLOYMENT_SPECIFIC
    differing = {
        key: (value, defaults[key])
        for key, value in shipped.items()
        if key not in DEPLOYMENT_SPECIFIC and (type(value), value) != (type(defaults[key]), defaults[key])
    }
    assert differing == {}, "pyproject.toml (left) disagrees with RunSettings (right); RunSettings is the source"


def test_the_deployment_specific_keys_have_no_default() -> None:
    assert all(RunSettings.model_fields[key.replace("-", "_")].is_required() for key in DEPLOYMENT_SPECIFIC)
    with pytest.raises(SettingsError, match="schema-path"):
        RunSettings.from_run_config({**_shipped_config()})


def test_the_run_names_the_public_context_and_the_node_the_secret_one(tmp_path: Path) -> None:
    run = RunSettings.from_run_config(
        {"schema-path": "schema.json", "privacy-mode": "he", "he-public-context": "server/he-public.ctx"}
    )
    node = NodeSettings.from_node_config(
        {"institution": "h1", "data-path": "data.csv", "he-secret-context": "hospital/he-secret.ctx"}
    )
    assert run.he_public_context == "server/he-public.ctx"
    assert node.he_secret_context == Path("hospital/he-secret.ctx")
    with pytest.raises(SettingsError, match="'he-public-context' is empty"):
        RunSettings.from_run_config({"schema-path": "schema.json", "privacy-mode": "he"})


@pytest.mark.parametrize(
    ("parse", "config", "renamed"),
    [
        (RunSettings.from_run_config, {"schema-path": "s.json", "he-context": "he-public.ctx"}, "he-public-context"),
        (
            NodeSettings.from_node_config,
            {"institution": "h1", "data-path": "d.csv", "he-context": "x"},
            "he-secret-context",
        ),
    ],
)
def test_the_old_he_context_key_is_refused_with_its_new_name(parse, config: dict[str, object], renamed: str) -> None:
    with pytest.raises(SettingsError, match=f"'he-context' is now '{renamed}'"):
        parse(config)


@pytest.mark.parametrize(
    ("mode", "metrics", "per_site"),
    [
        ("plain", "auto", True),
        ("plain", "per-site", True),
        ("he", "auto", False),
        ("secagg", "auto", False),
        ("he", "aggregate", False),
        ("secagg", "per-site", True),
    ],
)
def test_metrics_are_aggregate_only_by_default_where_the_server_cannot_read_updates(
    mode: str, metrics: str, per_site: bool
) -> None:
    settings = RunSettings.model_validate({"schema-path": "s.json", "privacy-mode": mode, "metrics": metrics})
    assert settings.per_site_metrics is per_site


def test_aggregate_metrics_in_plain_mode_are_refused_with_the_fix() -> None:
    with pytest.raises(SettingsError, match="metrics 'aggregate' needs privacy-mode 'he' or 'secagg'.*'per-site'"):
        RunSettings.from_run_config({"schema-path": "s.json", "metrics": "aggregate"})


def test_int8_compression_is_refused_in_he_mode_and_taken_in_the_others() -> None:
    with pytest.raises(SettingsError, match="'int8' does not apply to privacy-mode 'he'.*CKKS.*'none'"):
        RunSettings.from_run_config(
            {"schema-path": "s.json", "privacy-mode": "he", "he-public-context": "c", "update-compression": "int8"}
        )
    for mode in ("plain", "secagg"):
        settings = RunSettings.from_run_config(
            {"schema-path": "s.json", "privacy-mode": mode, "update-compression": "int8"}
        )
        assert settings.update_compression == "int8"
    with pytest.raises(SettingsError, match="update-compression"):
        RunSettings.from_run_config({"schema-path": "s.json", "update-compression": "int4"})


def test_a_round_deadline_is_taken_in_every_mode_and_must_fit_inside_the_secagg_stage_timeout() -> None:
    assert RunSettings.from_run_config({"schema-path": "s.json", "round-deadline": 30}).round_deadline == 30.0
    for mode, extra in (("secagg", {}), ("he", {"he-public-context": "c"})):
        settings = RunSettings.from_run_config(
            {"schema-path": "s.json", "privacy-mode": mode, "round-deadline": 30, **extra}
        )
        assert settings.round_deadline == 30.0
    # SecAgg+'s training stage waits secagg-timeout for every hospital: a deadline past it would drop them all.
    with pytest.raises(SettingsError, match="round-deadline .60 s. is not below secagg-timeout .60 s."):
        RunSettings.from_run_config({"schema-path": "s.json", "privacy-mode": "secagg", "round-deadline": 60})
    assert RunSettings.from_run_config({"schema-path": "s.json", "round-deadline": 60}).round_deadline == 60.0
    with pytest.raises(SettingsError, match="round-deadline"):
        RunSettings.from_run_config({"schema-path": "s.json", "round-deadline": -1})


def test_deadline_aggregation_is_fedavg_by_default_fednova_when_chosen_and_names_its_choices_when_unknown() -> None:
    base = {"schema-path": "s.json", "round-deadline": 30}
    settings = RunSettings.from_run_config(base)
    assert settings.deadline_aggregation == "fedavg" and not settings.fednova
    chosen = RunSettings.from_run_config({**base, "deadline-aggregation": "fednova"})
    assert chosen.fednova and chosen.normalises_steps
    # Without a deadline nothing is scheduled, so nothing is normalised, whatever the choice.
    assert not RunSettings.from_run_config({"schema-path": "s.json", "deadline-aggregation": "fednova"}).fednova
    with pytest.raises(SettingsError, match="deadline-aggregation: Input should be 'fedavg' or 'fednova'"):
        RunSettings.from_run_config({**base, "deadline-aggregation": "fedprox"})
