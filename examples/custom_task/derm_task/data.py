"""A consortium's task, hospital side: only hospitals import this module, never the coordinator.

`load_data(path, schema)` returns every local example in memory as a `common.data.HospitalData`
(features float32 of shape (n, channels, height, width), labels int64). This one keeps fedcare's image
folder reader (one folder per class; PNG, JPEG, DICOM; errors name the file) and drops photos the
hospital marked as unusable by a `.reject` file beside them, a rule of this consortium.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data import HospitalData
from common.schema import DatasetSchema, SchemaError
from common.tasks.images.data import read_image


def load_data(path: Path, schema: DatasetSchema) -> HospitalData:
    spec = schema.image
    if spec is None:
        raise SchemaError(f"{path}: the derm task needs the schema's image spec")
    images, labels = [], []
    for label, name in enumerate(spec.classes):
        folder = Path(path) / name
        for file in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
            if not file.with_suffix(".reject").exists():
                images.append(read_image(file, spec))
                labels.append(label)
    if not images:
        raise SchemaError(f"{path}: no usable .jpg photo in any class folder ({', '.join(spec.classes)})")
    return HospitalData(features=np.stack(images), labels=np.asarray(labels, dtype=np.int64))
