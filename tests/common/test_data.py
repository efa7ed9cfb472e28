"""Loading a hospital's table: every bad input is refused with the file, row and column named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import HospitalData, load_hospital_table, split_train_validation
from common.schema import DatasetSchema, FeatureSpec, SchemaError

HEADER = "age,lactate,outcome\n"


@pytest.fixture
def schema() -> DatasetSchema:
    return DatasetSchema(
        label="outcome",
        num_classes=3,
        features=[FeatureSpec(name="age", center=50.0, scale=10.0), FeatureSpec(name="lactate", center=1.0, scale=0.5)],
    )


def _csv(tmp_path: Path, body: str, *, name: str = "hospital.csv") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _error(path: Path, schema: DatasetSchema) -> str:
    with pytest.raises(SchemaError) as info:
        load_hospital_table(path, schema)
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    return message


def test_a_good_csv_is_standardised_with_the_shared_constants(tmp_path: Path, schema: DatasetSchema) -> None:
    path = _csv(tmp_path, HEADER + "60,1.5,0\n40,0.5,2\n55,2.0,1\n")
    data = load_hospital_table(path, schema)
    np.testing.assert_allclose(data.features, [[1.0, 1.0], [-1.0, -1.0], [0.5, 2.0]])
    np.testing.assert_array_equal(data.labels, [0, 2, 1])
    assert data.features.dtype == np.float32 and data.labels.dtype == np.int64
    assert len(data) == 3


def test_columns_follow_the_schema_order_and_extra_columns_are_ignored(tmp_path: Path, schema: DatasetSchema) -> None:
    path = _csv(tmp_path, "outcome,ward,lactate,age\n1,B,1.0,50\n")
    data = load_hospital_table(str(path), schema)
    np.testing.assert_allclose(data.features, [[0.0, 0.0]])
    np.testing.assert_array_equal(data.labels, [1])


def test_a_good_parquet_file_loads_like_the_csv(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "hospital.parquet"
    pd.DataFrame({"age": [60.0, 40.0], "lactate": [1.5, 0.5], "outcome": [0, 2]}).to_parquet(path)
    data = load_hospital_table(path, schema)
    np.testing.assert_allclose(data.features, [[1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(data.labels, [0, 2])


@pytest.mark.parametrize(
    "body,row,column,detail",
    [
        pytest.param(
            HEADER + "60,1.5,0\n40,high,1\n", 2, "lactate", "has 'high', not a finite number", id="non-numeric"
        ),
        pytest.param(HEADER + "60,1.5,0\n,1.0,1\n", 2, "age", "is empty", id="empty-cell"),
        pytest.param(
            HEADER + "60,1.5,0\n40,1.0,1\n45,inf,1\n", 3, "lactate", "has 'inf', not a finite number", id="inf"
        ),
        pytest.param(HEADER + "60,1.5,0\n40,NaN,1\n", 2, "lactate", "has 'NaN', not a finite number", id="nan-text"),
        pytest.param(HEADER + "60,1.5,0\n40,1.0\n", 2, "outcome", "is empty", id="short-row"),
        pytest.param(
            HEADER + "60,1.5,0\n40,1.0,1\n45,1.0,3\n",
            3,
            "outcome",
            "labels must be integers in [0, 2]",
            id="label-too-big",
        ),
        pytest.param(HEADER + "60,1.5,-1\n", 1, "outcome", "labels must be integers in [0, 2]", id="label-negative"),
        pytest.param(
            HEADER + "60,1.5,0\n40,1.0,1.5\n", 2, "outcome", "labels must be integers in [0, 2]", id="label-not-integer"
        ),
        pytest.param(HEADER + "60,1.5,sick\n", 1, "outcome", "has 'sick', not a finite number", id="label-word"),
    ],
)
def test_a_bad_value_is_reported_with_file_row_and_column(
    tmp_path: Path, schema: DatasetSchema, body: str, row: int, column: str, detail: str
) -> None:
    message = _error(_csv(tmp_path, body), schema)
    assert f"row {row}, column {column!r}" in message
    assert detail in message


def test_a_bad_label_is_shown_as_the_hospital_wrote_it(tmp_path: Path, schema: DatasetSchema) -> None:
    """The engineer fixing the export should see `3`, not a numpy repr such as `np.float64(3.0)`."""
    message = _error(_csv(tmp_path, HEADER + "60,1.5,3\n"), schema)
    assert "np.float64" not in message, message


def test_a_bad_value_in_parquet_is_reported_with_row_and_column(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "hospital.parquet"
    pd.DataFrame({"age": [60.0, 40.0, np.nan], "lactate": [1.5, 0.5, 1.0], "outcome": [0, 2, 1]}).to_parquet(path)
    message = _error(path, schema)
    assert "row 3, column 'age' is empty" in message


def test_a_missing_column_is_named(tmp_path: Path, schema: DatasetSchema) -> None:
    message = _error(_csv(tmp_path, "age,outcome\n60,0\n"), schema)
    assert "missing column(s) ['lactate']" in message


def test_a_file_with_only_a_header_has_no_data_rows(tmp_path: Path, schema: DatasetSchema) -> None:
    assert "no data rows" in _error(_csv(tmp_path, HEADER), schema)


def test_a_zero_byte_file_cannot_be_parsed(tmp_path: Path, schema: DatasetSchema) -> None:
    assert "cannot parse the file" in _error(_csv(tmp_path, ""), schema)


def test_a_ragged_csv_names_the_offending_line(tmp_path: Path, schema: DatasetSchema) -> None:
    message = _error(_csv(tmp_path, HEADER + "60,1.5,0\n40,1.0,1,7\n"), schema)
    assert "cannot parse the file" in message
    assert "line 3" in message  # file line, header included: pandas' own numbering


def test_a_corrupt_parquet_file_cannot_be_read(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "hospital.parquet"
    path.write_bytes(b"not a parquet file at all")
    assert "cannot read the file" in _error(path, schema)


def test_an_unsupported_suffix_is_refused(tmp_path: Path, schema: DatasetSchema) -> None:
    message = _error(_csv(tmp_path, HEADER + "60,1.5,0\n", name="hospital.xlsx"), schema)
    assert "unsupported file type '.xlsx'" in message


def test_a_missing_file_is_named(tmp_path: Path, schema: DatasetSchema) -> None:
    assert "data file not found" in _error(tmp_path / "absent.csv", schema)


def _numbered(n: int) -> HospitalData:
    """Row i has feature value i, so a split can be traced back to the rows."""
    return HospitalData(features=np.arange(n, dtype=np.float32).reshape(n, 1), labels=np.zeros(n, dtype=np.int64))


def test_split_is_deterministic_given_a_seed() -> None:
    data = _numbered(50)
    first = split_train_validation(data, validation_fraction=0.2, seed=3)
    again = split_train_validation(data, validation_fraction=0.2, seed=3)
    other = split_train_validation(data, validation_fraction=0.2, seed=4)
    np.testing.assert_array_equal(first[0].features, again[0].features)
    np.testing.assert_array_equal(first[1].features, again[1].features)
    assert not np.array_equal(first[1].features, other[1].features)


def test_split_is_disjoint_and_covers_every_row() -> None:
    train, val = split_train_validation(_numbered(50), validation_fraction=0.2, seed=3)
    train_rows, val_rows = set(train.features[:, 0].tolist()), set(val.features[:, 0].tolist())
    assert len(val) == 10 and len(train) == 40
    assert train_rows.isdisjoint(val_rows)
    assert train_rows | val_rows == set(range(50))


def test_split_keeps_labels_with_their_rows() -> None:
    data = HospitalData(features=np.arange(20, dtype=np.float32).reshape(20, 1), labels=np.arange(20) % 3)
    for part in split_train_validation(data, validation_fraction=0.3, seed=0):
        np.testing.assert_array_equal(part.labels, part.features[:, 0].astype(np.int64) % 3)


def test_split_refuses_a_table_too_small_to_hold_out_rows() -> None:
    with pytest.raises(SchemaError, match="too few rows"):
        split_train_validation(_numbered(1), validation_fraction=0.2, seed=0)
