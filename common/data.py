"""Loading a hospital's table, refusing anything the schema does not allow.

Errors name the file, the data row (1-based, header excluded) and the column so
the hospital's engineer can fix the export instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.schema import DatasetSchema, FeatureSpec, SchemaError
from common.table_files import CSV_SUFFIXES, PARQUET_SUFFIXES


@dataclass(frozen=True)
class HospitalData:
    """Model-ready arrays: standardised features and integer class labels."""

    features: np.ndarray  # float32, shape (n, len(schema.features))
    labels: np.ndarray  # int64, shape (n,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SchemaError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            # Read as text so a stray word is reported as such, not coerced to NaN.
            return pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot parse the file: {exc}") from exc
    except (OSError, ValueError) as exc:  # pyarrow raises these for a broken parquet file
        raise SchemaError(f"{path}: cannot read the file: {exc}") from exc
    raise SchemaError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _numeric_column(frame: pd.DataFrame, column: str, *, path: Path) -> np.ndarray:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        shown = str(raw.iloc[row]).strip()
        what = "is empty" if shown in {"", "nan", "None", "<NA>"} else f"has {shown!r}, not a finite number"
        raise SchemaError(f"{path}: row {row + 1}, column {column!r} {what}")
    return values


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _feature_column(frame: pd.DataFrame, spec: FeatureSpec, *, path: Path) -> np.ndarray:
    """The standardised column; a value that would overflow the model's float32 is refused (fuzzing found 1e300)."""
    values = (_numeric_column(frame, spec.name, path=path) - spec.center) / spec.scale
    too_big = ~(np.abs(values) <= _FLOAT32_MAX)
    if too_big.any():
        row = int(np.flatnonzero(too_big)[0])
        raise SchemaError(
            f"{path}: row {row + 1}, column {spec.name!r} has {str(frame[spec.name].iloc[row]).strip()!r}, "
            f"which standardised (center {spec.center:g}, scale {spec.scale:g}) exceeds float32's range; "
            "check the column's unit"
        )
    return values


def load_hospital_table(path: Path | str, schema: DatasetSchema) -> HospitalData:
    """Validate and standardise one hospital's CSV or Parquet file."""
    path = Path(path)
    frame = _read_table(path)
    if frame.empty:
        raise SchemaError(f"{path}: the file has no data rows")
    missing = [c for c in [*schema.feature_names, schema.label] if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; the schema expects them")

    columns = [_feature_column(frame, spec, path=path) for spec in schema.features]
    features = np.stack(columns, axis=1).astype(np.float32)

    labels = _numeric_column(frame, schema.label, path=path)
    invalid = (labels != np.round(labels)) | (labels < 0) | (labels >= schema.num_classes)
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise SchemaError(
            f"{path}: row {row + 1}, column {schema.label!r} has {str(frame[schema.label].iloc[row]).strip()!r}; "
            f"labels must be integers in [0, {schema.num_classes - 1}]"
        )
    return HospitalData(features=features, labels=labels.astype(np.int64))


def split_train_validation(
    data: HospitalData, *, validation_fraction: float, seed: int
) -> tuple[HospitalData, HospitalData]:
    """A fixed local hold-out, so the global model is scored on rows it never trained on."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    n_val = max(1, int(round(len(data) * validation_fraction)))
    val, train = order[:n_val], order[n_val:]
    if len(train) == 0:
        raise SchemaError("too few rows to keep a validation split; add data or lower the fraction")
    return (
        HospitalData(data.features[train], data.labels[train]),
        HospitalData(data.features[val], data.labels[val]),
    )
