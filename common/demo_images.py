"""Built-in image demo data: scikit-learn's digits, upscaled and written as PNG folders per class.

Nothing is downloaded. The split is the tabular demo's (`common.demo_data.dirichlet_partition`, the
same seed and holdout share), so hospitals see different digit mixes. Images are written larger than
the schema's size so the loader's resizing is exercised as with real scans.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from common.demo_data import DemoSplit, dirichlet_partition
from common.schema import IMAGE_TASK, DatasetSchema, ImageSpec, save_schema

WRITTEN_SIZE = 32  # pixels per side of the PNG files
MODEL_SIZE = 16  # what the schema resizes them to: small enough for DP-SGD on a CPU


def image_demo_schema(*, mean: float, std: float, size: int = MODEL_SIZE, width: int = 8) -> DatasetSchema:
    return DatasetSchema(
        label="digit",
        num_classes=10,
        task_module=IMAGE_TASK,
        model="resnet",
        image=ImageSpec(classes=[str(d) for d in range(10)], size=(size, size), mean=[mean], std=[std], width=width),
    )


def write_class_folders(root: Path, images: np.ndarray, labels: np.ndarray, *, names: list[str]) -> Path:
    """`images` (n, h, w) in [0, 1] as 8-bit PNGs under root/<class name>/, upscaled to WRITTEN_SIZE."""
    from PIL import Image

    if root.exists():  # a rerun: the folder is rewritten, not merged with an earlier split
        shutil.rmtree(root)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.round(image * 255).astype(np.uint8))
        pixels.resize((WRITTEN_SIZE, WRITTEN_SIZE), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.png")
    return root


def write_image_demo_split(out_dir: Path, *, hospitals: int, seed: int, alpha: float, holdout: float) -> DemoSplit:
    """Like `common.demo_data.write_demo_split`: schema.json, hospital-<i>/ and holdout/ folders."""
    bunch = load_digits()
    images, labels = bunch.images.astype(np.float32) / 16.0, bunch.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_holdout = int(len(labels) * holdout)
    held, pool = order[:n_holdout], order[n_holdout:]
    min_size = max(20, len(pool) // (3 * hospitals))
    parts = dirichlet_partition(labels[pool], parts=hospitals, alpha=alpha, seed=seed, min_size=min_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    schema = image_demo_schema(mean=float(images[pool].mean()), std=float(images[pool].std()))
    assert schema.image is not None
    schema_path = out_dir / "schema.json"
    save_schema(schema, schema_path)
    names = schema.image.classes
    holdout_path = write_class_folders(out_dir / "holdout", images[held], labels[held], names=names)
    paths = [
        write_class_folders(out_dir / f"hospital-{i}", images[pool[rows]], labels[pool[rows]], names=names)
        for i, rows in enumerate(parts, start=1)
    ]
    return DemoSplit(schema_path=schema_path, hospital_paths=paths, holdout_path=holdout_path)
