"""Image demo data: digits as PNG folders per class per hospital, non-IID, with a holdout no hospital holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.task_data import load_task_data
from common.demo_data import DemoSplit, write_demo_split
from common.schema import IMAGE_TASK, load_schema


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("images"), dataset="images", hospitals=3)


def test_folders_per_class_per_hospital_that_the_image_task_reads(split: DemoSplit) -> None:
    schema = load_schema(split.schema_path)
    assert schema.task_module == IMAGE_TASK and schema.image is not None and schema.image.size == (16, 16)
    assert [p.name for p in split.hospital_paths] == ["hospital-1", "hospital-2", "hospital-3"]
    assert split.holdout_path.name == "holdout"
    sizes, mixes = [], []
    for path in [*split.hospital_paths, split.holdout_path]:
        assert {d.name for d in path.iterdir()} <= set(schema.image.classes)
        data = load_task_data(path, schema)
        assert data.features.shape[1:] == (1, 16, 16)
        sizes.append(len(data))
        mixes.append(np.bincount(data.labels, minlength=10) / len(data))
    assert sum(sizes) == 1797  # every digit once: in one hospital or in the holdout
    assert sizes[-1] == int(1797 * 0.2)
    assert max(np.abs(mixes[0] - mixes[1]).max(), np.abs(mixes[1] - mixes[2]).max()) > 0.1  # label skew
    pixels = np.concatenate([load_task_data(p, schema).features.ravel() for p in split.hospital_paths])
    assert abs(pixels.mean()) < 0.2 and 0.7 < pixels.std() < 1.3  # normalised with the pool's statistics


def test_a_rerun_rewrites_the_folders_instead_of_merging(tmp_path: Path) -> None:
    first = write_demo_split(tmp_path, dataset="images", hospitals=2)
    stray = first.hospital_paths[0] / "0" / "stray.png"
    stray.write_bytes(b"")
    again = write_demo_split(tmp_path, dataset="images", hospitals=2)
    assert not stray.exists() and again.hospital_paths == first.hospital_paths
