"""The demo's per-data-set run settings are valid run config and cover every built-in data set."""

from __future__ import annotations

from typing import get_args

import pytest

from common.demo_data import DemoDataset
from common.settings import RunSettings
from fedcare.demo_defaults import DATASET_RUN_CONFIG, demo_run_config


@pytest.mark.parametrize("dataset", get_args(DemoDataset))
def test_every_demo_data_set_has_valid_settings_with_its_rounds(dataset: str) -> None:
    config = demo_run_config(dataset)
    settings = RunSettings.model_validate({**config, "schema-path": "schema.json"})
    assert settings.num_rounds == config["num-rounds"]
    config["num-rounds"] = 99  # a copy: callers may add to it
    assert DATASET_RUN_CONFIG[dataset]["num-rounds"] != 99


def test_an_unknown_data_set_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'x-rays'.*breast-cancer, digits"):
        demo_run_config("x-rays")
