"""The data contract a federation agrees on: which columns feed the model and how.

Every hospital validates its own file against the same schema, so a wrong column
or unit is caught at the hospital, with the row and column named, instead of
silently poisoning the global model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

# The built-in tasks (common/tasks/): module names a schema's `task_module` may give, like any installed task.
TABULAR_TASK, IMAGE_TASK = "common.tasks.tabular", "common.tasks.images"


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


class ImageSpec(BaseModel):
    """How a hospital's image files become model input, agreed federation-wide like `FeatureSpec`'s constants.

    The class list fixes the label of each folder name, so a hospital that lacks a class (non-IID data)
    still numbers the others as every other site does.
    """

    classes: list[str] = Field(min_length=2)  # one folder per class; a folder's label is its index here
    size: tuple[int, int]  # (height, width) every image is resized to
    channels: Literal[1, 3] = 1  # 1: grayscale (and DICOM), 3: RGB
    mean: list[float] = Field(default_factory=lambda: [0.5])  # per channel, after scaling pixels to [0, 1]
    std: list[float] = Field(default_factory=lambda: [0.5])
    width: int = Field(default=16, ge=2, le=256)  # the built-in ResNet's base channel count

    @model_validator(mode="after")
    def _check(self) -> ImageSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("image classes must be unique")
        bad = [c for c in self.classes if not c or c in {".", ".."} or "/" in c or "\\" in c]
        if bad:
            raise ValueError(f"image classes {bad} cannot be folder names")
        if not all(1 <= side <= 4096 for side in self.size):
            raise ValueError(f"image size {list(self.size)}: each side must be 1 to 4096 pixels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"image mean and std need one value per channel ({self.channels})")
        if not all(s > 0 for s in self.std):
            raise ValueError("image std values must be > 0")
        return self


class DatasetSchema(BaseModel):
    """Feature columns, label column and task of a hospital table; or, for an image task, its image spec.

    `task_module` names the task (an importable module, `common.tasks`); `task_version` and `model_hash`
    pin it: the ServerApp fills in what it built, and a hospital with another version refuses the round.
    """

    task: Literal["classification"] = "classification"
    label: str
    num_classes: int = Field(ge=2)
    features: list[FeatureSpec] = Field(default_factory=list)  # the tabular task needs at least one
    model: Literal["mlp", "cnn", "resnet"] = "mlp"
    input_shape: list[int] | None = None
    hidden_units: int = Field(default=64, ge=2, le=8192)  # mlp: width of the first hidden layer (the second is half)
    task_module: str = Field(default=TABULAR_TASK, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    task_version: str = ""  # "" until pinned: the ServerApp pins the version it has installed
    model_hash: str = ""  # the architecture's hash (common.tasks.pinning); "" until pinned
    image: ImageSpec | None = None  # the image task's files (common.tasks.images)
    options: dict[str, Any] = Field(default_factory=dict)  # a consortium's own task's settings, read by that task

    @model_validator(mode="after")
    def _check_shape(self) -> DatasetSchema:
        if self.task_module == TABULAR_TASK and not self.features:
            raise ValueError("features: the tabular task needs at least one feature column")
        if (self.model == "resnet" or self.task_module == IMAGE_TASK) and self.image is None:
            raise ValueError(f"image: task {IMAGE_TASK} (model 'resnet') needs an image spec")
        if self.image is not None and len(self.image.classes) != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but image.classes lists {len(self.image.classes)} classes"
            )
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
