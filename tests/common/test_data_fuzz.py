"""Fuzzing the hospital's table loader: any CSV or Parquet file loads clean or raises SchemaError naming the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data import load_hospital_table
from common.schema import DatasetSchema, FeatureSpec, SchemaError, load_schema
from tests.support.hostile import EDGE_TEXT, hostile_floats, hostile_ints, hostile_text, json_values, mutated_bytes

SCHEMA = DatasetSchema(
    label="outcome",
    num_classes=3,
    features=[FeatureSpec(name="age", center=50.0, scale=10.0), FeatureSpec(name="lactate", center=1.0, scale=0.5)],
)
COLUMNS = ["age", "lactate", "outcome"]
GOOD_CSV = b"age,lactate,outcome\n60,1.5,0\n40,2.0,1\n45,0.9,2\n"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tables")


def _good_parquet() -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({"age": [60.0, 40.0], "lactate": [1.5, 2.0], "outcome": [0, 1]}).to_parquet(buffer)
    return buffer.getvalue()


def _loads_clean_or_names_the_file(path: Path) -> None:
    try:
        data = load_hospital_table(path, SCHEMA)
    except SchemaError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return
    assert data.features.dtype == np.float32 and data.features.shape == (len(data), len(SCHEMA.features))
    assert np.isfinite(data.features).all()
    assert data.labels.dtype == np.int64 and ((data.labels >= 0) & (data.labels < SCHEMA.num_classes)).all()


cells = st.one_of(hostile_text(max_size=20), hostile_ints().map(str), hostile_floats().map(repr))
headers = st.one_of(
    st.just(COLUMNS),
    st.permutations(COLUMNS),
    st.lists(st.one_of(st.sampled_from(COLUMNS), st.sampled_from(EDGE_TEXT)), min_size=0, max_size=5),
)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    header = draw(headers)
    width = st.integers(min_value=max(len(header) - 1, 0), max_value=len(header) + 1)
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=8), max_size=6))
    rows = [row[: draw(width)] for row in rows]
    separator = draw(st.sampled_from([",", ";", ",,"]))
    return "\n".join(separator.join(line) for line in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))


@FUZZ
@given(text=csv_texts())
def test_any_csv_text_loads_clean_or_raises_schema_error(folder: Path, text: str) -> None:
    path = folder / "hospital.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _loads_clean_or_names_the_file(path)


@FUZZ
@given(blob=st.one_of(mutated_bytes(GOOD_CSV), st.binary(max_size=200)))
def test_any_csv_bytes_load_clean_or_raise_schema_error(folder: Path, blob: bytes) -> None:
    path = folder / "damaged.csv"
    path.write_bytes(blob)
    _loads_clean_or_names_the_file(path)


@FUZZ
@given(blob=st.one_of(mutated_bytes(_good_parquet(), max_edits=4), st.binary(max_size=200)))
def test_any_parquet_bytes_load_clean_or_raise_schema_error(folder: Path, blob: bytes) -> None:
    path = folder / "damaged.parquet"
    path.write_bytes(blob)
    _loads_clean_or_names_the_file(path)


parquet_columns = st.one_of(
    st.lists(hostile_floats(), min_size=2, max_size=2),
    st.lists(hostile_ints().filter(lambda i: -(2**63) <= i < 2**63), min_size=2, max_size=2),
    st.lists(hostile_text(max_size=10).filter(lambda s: "\ud800" not in s), min_size=2, max_size=2),
    st.lists(st.booleans(), min_size=2, max_size=2),
    st.lists(st.binary(max_size=8), min_size=2, max_size=2),
    st.lists(st.lists(st.integers(min_value=0, max_value=3), max_size=3), min_size=2, max_size=2),
    st.lists(st.none(), min_size=2, max_size=2),
    st.just(list(pd.to_datetime(["2024-01-01", "2024-01-02"]))),
)


@FUZZ
@given(table=st.fixed_dictionaries({name: parquet_columns for name in COLUMNS}))
def test_parquet_columns_of_any_type_load_clean_or_raise_schema_error(folder: Path, table: dict) -> None:
    path = folder / "typed.parquet"
    pd.DataFrame(table).to_parquet(path)
    _loads_clean_or_names_the_file(path)


GOOD_SCHEMA = SCHEMA.model_dump_json().encode()


@FUZZ
@given(
    blob=st.one_of(
        mutated_bytes(GOOD_SCHEMA),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"label": hostile_text(), "num_classes": hostile_ints(), "features": json_values()},
            optional={"model": hostile_text(), "input_shape": json_values(), "hidden_units": hostile_ints()},
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_schema_file_loads_or_raises_schema_error(folder: Path, blob: bytes) -> None:
    path = folder / "schema.json"
    path.write_bytes(blob)
    try:
        schema = load_schema(path)
    except SchemaError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return
    assert isinstance(schema, DatasetSchema) and schema.num_classes >= 2


def test_a_value_beyond_float32_after_standardising_names_its_row_and_column(folder: Path) -> None:
    """Found by the fuzz: 1e300 is finite as float64 but became inf in the model's float32 features."""
    path = folder / "huge.csv"
    path.write_text("age,lactate,outcome\n60,1.5,0\n40,1e300,1\n")
    with pytest.raises(SchemaError, match=r"huge.csv: row 2, column 'lactate' has '1e300'.*float32"):
        load_hospital_table(path, SCHEMA)


@pytest.mark.parametrize("blob", [b"\xfb{}", b"[" * 100_000], ids=["not-utf8", "nested-too-deep"])
def test_a_schema_file_that_is_not_json_text_is_a_schema_error(folder: Path, blob: bytes) -> None:
    """Found by the fuzz: these raised UnicodeDecodeError and RecursionError instead of SchemaError."""
    path = folder / "broken-schema.json"
    path.write_bytes(blob)
    with pytest.raises(SchemaError, match="broken-schema.json: not valid JSON"):
        load_schema(path)
