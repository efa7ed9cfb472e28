"""The round config: built from the run settings, carried in a Flower ConfigRecord, parsed once at the hospital."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord

from common.round_config import RoundConfig
from common.schema import DatasetSchema, FeatureSpec
from common.settings import RunSettings, SettingsError, TrainingSettings

SCHEMA = DatasetSchema(label="y", num_classes=2, features=[FeatureSpec(name="a"), FeatureSpec(name="b", scale=2.0)])


def _settings(**overrides: object) -> RunSettings:
    return RunSettings.from_run_config({"schema-path": "schema.json", **overrides})


def _sent(settings: RunSettings, server_round: int = 3) -> dict[str, object]:
    """What a hospital finds in the message: the record the server builds, as Flower carries it."""
    record = ConfigRecord(RoundConfig.for_round(settings, schema=SCHEMA, server_round=server_round).as_config())
    return dict(record)


def test_the_hospital_gets_the_run_settings_typed() -> None:
    settings = _settings(
        **{
            "batch-size": 32,
            "learning-rate": 0.5,
            "amp": "bf16",
            "dp": False,
            "privacy-mode": "he",
            "he-public-context": "p.ctx",
            "deadline-aggregation": "fednova",  # where the hospital pre-scales its update (common/fednova_sum.py)
        }
    )
    config = RoundConfig.from_config(_sent(settings, server_round=4))
    assert (config.server_round, config.dataset_schema) == (4, SCHEMA)
    for name in TrainingSettings.model_fields:
        assert getattr(config, name) == getattr(settings, name), name
    assert (type(config.batch_size), type(config.learning_rate), type(config.dp)) == (int, float, bool)


def test_only_the_training_settings_travel() -> None:
    aliases = {field.alias or name for name, field in TrainingSettings.model_fields.items()}
    # no paths, URLs or server timeouts; the HE key id is public (a digest), and empty outside HE mode; the
    # fedcare run id is the one a resumed run keeps (docs/resume.md), empty unless the server names it
    assert set(_sent(_settings())) == aliases | {"server-round", "schema", "he-key-id", "fedcare-run-id"}


def test_a_missing_key_is_refused_by_name_not_defaulted() -> None:
    sent = _sent(_settings())
    del sent["batch-size"], sent["amp"]
    with pytest.raises(SettingsError, match="lacks amp, batch-size: the coordinator and this hospital run different"):
        RoundConfig.from_config(sent)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch-size", 0, "batch-size: Input should be greater than or equal to 1"),
        ("amp", "fp8", "amp: Input should be"),
        ("privacy-mode", "rot13", "privacy-mode: Input should be 'plain', 'he' or 'secagg'"),
        ("deadline-aggregation", "scaffold", "deadline-aggregation: Input should be 'fedavg' or 'fednova'"),
        ("server-round", 0, "server-round"),
        ("schema", '{"label": "y"}', "schema.num_classes: Field required"),
        ("schema", "not json", "schema: Invalid JSON"),
        ("surprise", 1, "surprise: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^round config from the server: .*{message}"):
        RoundConfig.from_config({**_sent(_settings()), key: value})
