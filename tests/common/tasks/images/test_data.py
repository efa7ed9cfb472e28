"""The image task's loader on real files: PNG, JPEG and DICOM written here; every error names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from common.schema import IMAGE_TASK, DatasetSchema, ImageSpec, SchemaError
from common.tasks.images.data import load_data


def _schema(*, channels: int = 1, size: tuple[int, int] = (4, 4), classes: tuple[str, ...] = ("cat", "dog")):
    spec = ImageSpec(classes=list(classes), size=size, channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    return DatasetSchema(label="animal", num_classes=len(classes), task_module=IMAGE_TASK, model="resnet", image=spec)


def _png(path: Path, value: int, *, mode: str = "L", size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", frames: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "anonymous"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_png_folders_become_labelled_normalised_arrays(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", 0)
    _png(tmp_path / "dog" / "b.png", 255)
    _png(tmp_path / "dog" / "c.PNG", 255, size=(20, 12))  # another size: resized like the others
    data = load_data(tmp_path, _schema())
    assert data.features.shape == (3, 1, 4, 4) and data.features.dtype == np.float32
    assert data.labels.tolist() == [0, 1, 1]  # the schema's class order, not the folders' listing order
    # (pixel / 255 - mean 0.5) / std 0.25
    assert np.allclose(data.features[0], -2.0) and np.allclose(data.features[1:], 2.0)


def test_a_hospital_may_lack_a_class_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "b.png", 255)
    (tmp_path / ".DS_Store").write_text("finder")
    data = load_data(tmp_path, _schema())
    assert data.labels.tolist() == [1]


def test_rgb_jpeg_and_png_for_a_three_channel_schema(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.jpg", 128, mode="RGB")
    _png(tmp_path / "dog" / "b.png", 255, mode="RGB")
    data = load_data(tmp_path, _schema(channels=3))
    assert data.features.shape == (2, 3, 4, 4)
    assert np.allclose(data.features[0], (128 / 255 - 0.5) / 0.25, atol=0.05)  # JPEG is lossy


def test_a_dicom_file_is_read_with_its_modality_lut_and_scaled_to_its_range(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(8, dtype=np.uint16) * 500, (8, 1))  # 0..3500, 12 bits stored
    _dicom(tmp_path / "cat" / "scan.dcm", pixels)
    _dicom(tmp_path / "dog" / "inverted.dcm", pixels, photometric="MONOCHROME1")
    data = load_data(tmp_path, _schema(size=(8, 8)))
    scaled = np.arange(8) / 7  # min to max after slope 2, intercept -100
    assert np.allclose(data.features[0, 0], (scaled - 0.5) / 0.25, atol=1e-5)
    assert np.allclose(data.features[1, 0], ((1 - scaled) - 0.5) / 0.25, atol=1e-5)  # MONOCHROME1 is inverted
    assert pydicom.dcmread(tmp_path / "cat" / "scan.dcm").RescaleSlope == 2


def _refused(root: Path, schema: DatasetSchema | None = None) -> str:
    with pytest.raises(SchemaError) as info:
        load_data(root, schema or _schema())
    return str(info.value)


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "cat" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    message = _refused(tmp_path)
    assert message.startswith(f"{bad}: cannot read the image")


def test_a_truncated_dicom_is_named(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "cat" / "scan.dcm", np.zeros((8, 8)))
    path.write_bytes(path.read_bytes()[:200])
    assert _refused(tmp_path).startswith(f"{path}: cannot read the DICOM file")


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_colour_image_for_a_grayscale_schema_names_its_mode(tmp_path: Path, mode: str) -> None:
    path = _png(tmp_path / "cat" / "colour.png", 10, mode=mode)
    message = _refused(tmp_path)
    assert message.startswith(f"{path}: image mode {mode!r}, but the schema expects 1 channel(s)")


def test_a_grayscale_image_for_an_rgb_schema_names_its_mode(tmp_path: Path) -> None:
    path = _png(tmp_path / "cat" / "gray.png", 10)
    assert _refused(tmp_path, _schema(channels=3)).startswith(f"{path}: image mode 'L', but the schema expects 3")


def test_a_grayscale_dicom_for_an_rgb_schema_and_a_multi_frame_dicom_are_named(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "cat" / "scan.dcm", np.zeros((8, 8)))
    assert _refused(tmp_path, _schema(channels=3)).startswith(f"{path}: DICOM with 1 sample(s) per pixel")
    movie = _dicom(tmp_path / "cat" / "scan.dcm", np.zeros((2, 8, 8)), frames=2)
    assert _refused(tmp_path).startswith(f"{movie}: a DICOM of 2 frames")


def test_an_empty_class_folder_is_named(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", 0)
    (tmp_path / "dog").mkdir()
    assert _refused(tmp_path).startswith(f"{tmp_path / 'dog'}: class folder 'dog' holds no images")


@pytest.mark.parametrize("name", ["notes.txt", "scan.tiff", "README"])
def test_an_unknown_extension_is_named(tmp_path: Path, name: str) -> None:
    _png(tmp_path / "cat" / "a.png", 0)
    stray = tmp_path / "cat" / name
    stray.write_text("x")
    message = _refused(tmp_path)
    assert message.startswith(f"{stray}: unknown image type") and ".dcm" in message


def test_a_folder_that_is_not_a_class_and_a_stray_file_are_named(tmp_path: Path) -> None:
    _png(tmp_path / "bird" / "a.png", 0)
    assert _refused(tmp_path) == f"{tmp_path / 'bird'}: folder 'bird' is not a class of the schema (cat, dog)"
    (tmp_path / "bird" / "a.png").rename(tmp_path / "a.png")
    (tmp_path / "bird").rmdir()
    assert _refused(tmp_path).startswith(f"{tmp_path / 'a.png'}: a file beside the class folders")


def test_a_missing_folder_and_a_folder_without_images_are_named(tmp_path: Path) -> None:
    assert _refused(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: not a folder")
    assert _refused(tmp_path) == f"{tmp_path}: no class folder holds images (cat, dog)"
