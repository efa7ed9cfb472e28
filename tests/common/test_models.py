"""The model zoo: shapes, DP-SGD compatibility, reproducible initialisation."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from common.models import SmallImageCNN, TabularMLP, build_model, parameter_count
from common.schema import DatasetSchema, FeatureSpec


def _schema(model: str) -> DatasetSchema:
    if model == "cnn":
        return DatasetSchema(
            label="y",
            num_classes=10,
            features=[FeatureSpec(name=f"p{i}") for i in range(64)],
            model="cnn",
            input_shape=[1, 8, 8],
        )
    return DatasetSchema(label="y", num_classes=3, features=[FeatureSpec(name=f"f{i}") for i in range(5)])


def test_tabular_mlp_gives_one_logit_per_class() -> None:
    model = TabularMLP(in_features=5, num_classes=3)
    assert model(torch.randn(7, 5)).shape == (7, 3)


@pytest.mark.parametrize("batch_shape", [(4, 64), (4, 1, 8, 8)])
def test_small_cnn_takes_flat_rows_or_images(batch_shape: tuple[int, ...]) -> None:
    model = SmallImageCNN(input_shape=(1, 8, 8), num_classes=10)
    assert model(torch.randn(*batch_shape)).shape == (4, 10)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_models_have_no_batchnorm_and_pass_opacus_validation(kind: str) -> None:
    model = build_model(_schema(kind), seed=0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []


def test_opacus_validation_would_catch_batchnorm() -> None:
    """Guards the test above: the validator really does flag BatchNorm."""
    assert ModuleValidator.validate(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), strict=False)


def test_build_model_picks_the_architecture_the_schema_names() -> None:
    assert isinstance(build_model(_schema("mlp")), TabularMLP)
    cnn = build_model(_schema("cnn"))
    assert isinstance(cnn, SmallImageCNN) and cnn.input_shape == (1, 8, 8)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_same_seed_gives_identical_weights(kind: str) -> None:
    a, b = build_model(_schema(kind), seed=42), build_model(_schema(kind), seed=42)
    c = build_model(_schema(kind), seed=43)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    assert not all(
        torch.equal(wa, wc) for wa, wc in zip(a.state_dict().values(), c.state_dict().values(), strict=False)
    )


def test_parameter_count_matches_the_layer_sizes() -> None:
    # Linear(4, 64) + Linear(64, 32) + Linear(32, 3), weights and biases.
    expected = (4 * 64 + 64) + (64 * 32 + 32) + (32 * 3 + 3)
    assert parameter_count(TabularMLP(in_features=4, num_classes=3)) == expected == 2499


def test_small_cnn_default_is_narrow_for_dp_and_wider_settings_remain() -> None:
    # conv 1->8 and 8->16 (3x3, with GroupNorm), then straight to 10 classes from 16 x 4 x 4 features.
    narrow = (1 * 9 * 8 + 8) + (8 + 8) + (8 * 9 * 16 + 16) + (16 + 16) + (16 * 4 * 4 * 10 + 10)
    assert parameter_count(SmallImageCNN(input_shape=(1, 8, 8), num_classes=10)) == narrow == 3866
    wide = SmallImageCNN(input_shape=(1, 8, 8), num_classes=10, conv_channels=(16, 32), hidden=64, activation=nn.Tanh)
    assert wide(torch.randn(2, 64)).shape == (2, 10) and any(isinstance(m, nn.Tanh) for m in wide.modules())
    assert ModuleValidator.validate(wide, strict=False) == []
