"""The federation's data contract: what DatasetSchema accepts and how load_schema reports problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.schema import DatasetSchema, FeatureSpec, SchemaError, load_schema, save_schema


def _features(n: int) -> list[dict[str, str]]:
    return [{"name": f"f{i}"} for i in range(n)]


def test_a_valid_tabular_schema_lists_its_feature_names() -> None:
    schema = DatasetSchema(label="y", num_classes=2, features=_features(3))
    assert schema.feature_names == ["f0", "f1", "f2"]
    assert schema.model == "mlp"
    assert schema.features[0].center == 0.0 and schema.features[0].scale == 1.0


def test_cnn_input_shape_must_hold_exactly_the_listed_features() -> None:
    with pytest.raises(
        ValidationError, match=r"input_shape \[1, 8, 8\] holds 64 values but the schema lists 63 features"
    ):
        DatasetSchema(label="y", num_classes=10, features=_features(63), model="cnn", input_shape=[1, 8, 8])


def test_cnn_with_a_matching_input_shape_is_accepted() -> None:
    schema = DatasetSchema(label="y", num_classes=10, features=_features(64), model="cnn", input_shape=[1, 8, 8])
    assert schema.input_shape == [1, 8, 8]


@pytest.mark.parametrize("shape", [None, [], [8, 8]])
def test_cnn_needs_a_three_dimensional_input_shape(shape: list[int] | None) -> None:
    with pytest.raises(ValidationError, match=r"needs input_shape \[channels, height, width\]"):
        DatasetSchema(label="y", num_classes=10, features=_features(64), model="cnn", input_shape=shape)


def test_duplicate_feature_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="feature names must be unique"):
        DatasetSchema(label="y", num_classes=2, features=[{"name": "age"}, {"name": "age"}])


def test_the_label_cannot_also_be_a_feature() -> None:
    with pytest.raises(ValidationError, match="label column 'y' is also listed as a feature"):
        DatasetSchema(label="y", num_classes=2, features=[{"name": "age"}, {"name": "y"}])


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="scale"):
        FeatureSpec(name="age", scale=0.0)


@pytest.mark.parametrize("field,value", [("num_classes", 1), ("features", []), ("task", "regression")])
def test_out_of_contract_fields_are_refused(field: str, value: object) -> None:
    raw = {"label": "y", "num_classes": 2, "features": _features(2), field: value}
    with pytest.raises(ValidationError, match=field):
        DatasetSchema.model_validate(raw)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    schema = DatasetSchema(
        label="y",
        num_classes=10,
        features=[FeatureSpec(name=f"p{i}", center=8.0, scale=8.0) for i in range(4)],
        model="cnn",
        input_shape=[1, 2, 2],
    )
    path = tmp_path / "schema.json"
    save_schema(schema, path)
    assert load_schema(path) == schema


def test_load_schema_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(SchemaError, match="schema file not found") as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_load_schema_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"label": "y", ')
    with pytest.raises(SchemaError, match="not valid JSON") as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_load_schema_names_the_file_and_the_invalid_field(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"label": "y", "num_classes": 1, "features": _features(2)}))
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid schema: ")
    assert "num_classes" in message


def test_load_schema_reports_whole_schema_problems_at_the_root(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"label": "f0", "num_classes": 2, "features": _features(2)}))
    with pytest.raises(SchemaError, match="also listed as a feature") as info:
        load_schema(path)
    assert str(path) in str(info.value)
    assert "<root>" in str(info.value)


def test_load_schema_names_a_missing_required_field(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"num_classes": 2, "features": _features(2)}))
    with pytest.raises(SchemaError, match="label: Field required"):
        load_schema(path)
