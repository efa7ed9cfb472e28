"""The data contract a federation agrees on: which columns feed the model and how.

Every hospital validates its own file against the same schema, so a wrong column
or unit is caught at the hospital, with the row and column named, instead of
silently poisoning the global model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator


class SchemaError(ValueError):
    """A data file or schema that does not match the federation's contract."""


class FeatureSpec(BaseModel):
    """One input column; `center` and `scale` are agreed federation-wide.

    Standardising with shared constants (instead of each hospital's own mean) keeps
    one patient's value meaning the same thing at every site under non-IID data.
    """

    name: str
    center: float = 0.0
    scale: float = Field(default=1.0, gt=0)


class DatasetSchema(BaseModel):
    """Feature columns, label column and task of a hospital table."""

    task: Literal["classification"] = "classification"
    label: str
    num_classes: int = Field(ge=2)
    features: list[FeatureSpec] = Field(min_length=1)
    model: Literal["mlp", "cnn"] = "mlp"
    input_shape: list[int] | None = None
    hidden_units: int = Field(default=64, ge=2, le=8192)  # mlp: width of the first hidden layer (the second is half)

    @model_validator(mode="after")
    def _check_shape(self) -> DatasetSchema:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.label in names:
            raise ValueError(f"label column {self.label!r} is also listed as a feature")
        if self.model == "cnn":
            if not self.input_shape or len(self.input_shape) != 3:
                raise ValueError("model 'cnn' needs input_shape [channels, height, width]")
            c, h, w = self.input_shape
            if c * h * w != len(self.features):
                raise ValueError(
                    f"input_shape {self.input_shape} holds {c * h * w} values "
                    f"but the schema lists {len(self.features)} features"
                )
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def load_schema(path: Path) -> DatasetSchema:
    """Read a schema JSON file; errors name the file and the offending field."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: schema file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # all three found by fuzzing
        raise SchemaError(f"{path}: not valid JSON ({exc})") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise SchemaError(f"{path}: cannot read the schema file ({exc.strerror})") from exc
    try:
        return DatasetSchema.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise SchemaError(f"{path}: invalid schema: {problems}") from exc


def save_schema(schema: DatasetSchema, path: Path) -> None:
    Path(path).write_text(schema.model_dump_json(indent=2, exclude_none=True))
