"""The image task's hospital side: a folder per class of PNG, JPEG or DICOM files, as model-ready arrays.

Layout: ``<data-path>/<class>/<image>``, class folder names as the schema's `image.classes` lists
them (a hospital may lack a class: non-IID data). Every error names the file or folder to fix.
Pixels become floats in [0, 1] (8-bit by 255, 16-bit by 65535, DICOM after its modality LUT by the
image's own range), are resized bilinearly to `image.size`, then normalised with `image.mean` and
`image.std`. Images are held in memory: a federation of large scans would stream them instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data import HospitalData
from common.schema import DatasetSchema, ImageSpec, SchemaError

PILLOW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# Pillow modes read as one channel, with the value that means "white"; RGB is the only 3-channel mode.
GRAYSCALE_SCALE = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


def _read_pillow(path: Path, spec: ImageSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # hospital-only, and only for this task

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if spec.channels == 1 and mode in GRAYSCALE_SCALE:
                return np.asarray(image, dtype=np.float32)[..., None] / GRAYSCALE_SCALE[mode]
            if spec.channels == 3 and mode == "RGB":
                return np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read the image ({exc})") from exc
    wanted = "grayscale (L or 16-bit)" if spec.channels == 1 else "RGB"
    raise SchemaError(
        f"{path}: image mode {mode!r}, but the schema expects {spec.channels} channel(s), {wanted}; "
        f"convert the file (e.g. Pillow's image.convert({'L' if spec.channels == 1 else 'RGB'!r}))"
    )


def _read_dicom(path: Path, spec: ImageSpec) -> np.ndarray:
    import pydicom  # hospital-only, and only for DICOM files
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for a broken file (InvalidDicomError, AttributeError...)
        raise SchemaError(f"{path}: cannot read the DICOM file ({type(exc).__name__}: {exc})") from exc
    frames, samples = int(dataset.get("NumberOfFrames", 1) or 1), int(dataset.get("SamplesPerPixel", 1))
    if frames != 1:
        raise SchemaError(f"{path}: a DICOM of {frames} frames; the image task reads single images")
    if samples != spec.channels:
        raise SchemaError(
            f"{path}: DICOM with {samples} sample(s) per pixel ({dataset.get('PhotometricInterpretation', '?')}), "
            f"but the schema expects {spec.channels} channel(s)"
        )
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # stored inverted: higher means darker
        values = values.max() - values
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return scaled if scaled.ndim == 3 else scaled[..., None]


def read_image(path: Path, spec: ImageSpec) -> np.ndarray:
    """One file as a (channels, height, width) float32 array, resized and normalised as `spec` says."""
    from PIL import Image

    BILINEAR = Image.Resampling.BILINEAR
    suffix = path.suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        pixels = _read_pillow(path, spec)
    elif suffix in DICOM_SUFFIXES:
        pixels = _read_dicom(path, spec)
    else:
        raise SchemaError(
            f"{path}: unknown image type {suffix or '(no extension)'!r}; "
            f"use {', '.join(sorted(PILLOW_SUFFIXES | DICOM_SUFFIXES))}"
        )
    height, width = spec.size
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize((width, height), BILINEAR))
        for c in range(pixels.shape[-1])
    ]
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return ((np.stack(channels) - mean) / std).astype(np.float32)


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))  # skips .DS_Store and the like


def load_data(path: Path | str, schema: DatasetSchema) -> HospitalData:
    """Every image under `path`, labelled by its class folder's index in the schema's class list."""
    root, spec = Path(path), schema.image
    if spec is None:
        raise SchemaError(f"{root}: the schema has no image spec; the image task needs one")
    classes = ", ".join(spec.classes)
    if not root.is_dir():
        raise SchemaError(f"{root}: not a folder; the image task reads one folder per class ({classes})")
    for entry in _entries(root):
        if not entry.is_dir():
            raise SchemaError(f"{entry}: a file beside the class folders; put each image in its class's folder")
        if entry.name not in spec.classes:
            raise SchemaError(f"{entry}: folder {entry.name!r} is not a class of the schema ({classes})")
    images, labels = [], []
    for label, name in enumerate(spec.classes):
        folder = root / name
        if not folder.is_dir():
            continue  # this hospital has no images of the class
        files = _entries(folder)
        if not files:
            raise SchemaError(f"{folder}: class folder {name!r} holds no images; add images or remove the folder")
        for file in files:
            if not file.is_file():
                raise SchemaError(f"{file}: not an image file; a class folder holds images only")
            images.append(read_image(file, spec))
            labels.append(label)
    if not images:
        raise SchemaError(f"{root}: no class folder holds images ({classes})")
    return HospitalData(features=np.stack(images), labels=np.asarray(labels, dtype=np.int64))
