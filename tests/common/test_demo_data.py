"""Demo data: non-IID hospital files plus a holdout that no hospital ever sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from common.data import load_hospital_table
from common.demo_data import DemoSplit, dirichlet_partition, write_demo_split
from common.schema import load_schema

SIZES = {"breast-cancer": 569, "digits": 1797}


@pytest.fixture(scope="module", params=["breast-cancer", "digits"])
def split(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, DemoSplit]:
    dataset = request.param
    return dataset, write_demo_split(tmp_path_factory.mktemp(dataset), dataset=dataset, hospitals=3)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def _original(dataset: str) -> pd.DataFrame:
    if dataset == "breast-cancer":
        return load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    return load_digits(as_frame=True).frame


def test_every_file_is_written(split: tuple[str, DemoSplit]) -> None:
    _, demo = split
    assert demo.schema_path.name == "schema.json" and demo.schema_path.is_file()
    assert demo.holdout_path.name == "holdout.csv" and demo.holdout_path.is_file()
    assert [p.name for p in demo.hospital_paths] == ["hospital-1.csv", "hospital-2.csv", "hospital-3.csv"]
    assert all(p.is_file() for p in demo.hospital_paths)


def test_hospitals_and_holdout_partition_the_dataset(split: tuple[str, DemoSplit]) -> None:
    dataset, demo = split
    hospitals = [_read(p) for p in demo.hospital_paths]
    holdout = _read(demo.holdout_path)
    assert sum(len(h) for h in hospitals) + len(holdout) == SIZES[dataset]
    assert len(holdout) == int(SIZES[dataset] * 0.2)
    # Same multiset of rows as the original: nothing duplicated across files, nothing lost.
    original = _original(dataset)
    combined = pd.concat([*hospitals, holdout])[list(original.columns)]
    as_sorted = lambda frame: np.array(sorted(map(tuple, frame.to_numpy(dtype=np.float64).tolist())))  # noqa: E731
    np.testing.assert_array_equal(as_sorted(combined), as_sorted(original))


def test_breast_cancer_holdout_shares_no_row_with_any_hospital(tmp_path: Path) -> None:
    demo = write_demo_split(tmp_path, dataset="breast-cancer", hospitals=3)
    rows = lambda path: set(map(tuple, _read(path).to_numpy().tolist()))  # noqa: E731
    holdout = rows(demo.holdout_path)
    for path in demo.hospital_paths:
        assert holdout.isdisjoint(rows(path)), path.name


def test_label_mix_differs_between_hospitals(split: tuple[str, DemoSplit]) -> None:
    dataset, demo = split
    classes = 2 if dataset == "breast-cancer" else 10
    mixes = [
        _read(p)["target"].value_counts(normalize=True).reindex(range(classes), fill_value=0.0).to_numpy()
        for p in demo.hospital_paths
    ]
    largest_gap = max(0.5 * np.abs(a - b).sum() for i, a in enumerate(mixes) for b in mixes[i + 1 :])
    assert largest_gap > 0.2, f"label mixes look IID: {mixes}"


def test_hospital_files_pass_their_own_schema(split: tuple[str, DemoSplit]) -> None:
    dataset, demo = split
    schema = load_schema(demo.schema_path)
    assert schema.model == ("mlp" if dataset == "breast-cancer" else "cnn")
    for path in [*demo.hospital_paths, demo.holdout_path]:
        data = load_hospital_table(path, schema)
        assert len(data) >= 20
        assert data.features.shape[1] == len(schema.features)
        # The shared constants roughly centre the data rather than leaving raw units.
        assert abs(float(data.features.mean())) < 1.5


def test_the_split_is_reproducible(tmp_path: Path) -> None:
    a = write_demo_split(tmp_path / "a", dataset="breast-cancer", hospitals=2, seed=11)
    b = write_demo_split(tmp_path / "b", dataset="breast-cancer", hospitals=2, seed=11)
    for pa, pb in zip([*a.hospital_paths, a.holdout_path], [*b.hospital_paths, b.holdout_path], strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_dirichlet_partition_covers_every_index_once() -> None:
    labels = np.repeat([0, 1, 2], 40)
    parts = dirichlet_partition(labels, parts=3, alpha=1.0, seed=0, min_size=5)
    assert len(parts) == 3 and all(len(p) >= 5 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_dirichlet_partition_says_when_the_split_is_impossible() -> None:
    with pytest.raises(ValueError, match="could not split into 3 parts of at least 20 rows; use fewer hospitals"):
        dirichlet_partition(np.repeat([0, 1], 15), parts=3, alpha=1.0, seed=0, min_size=20)


def test_write_demo_split_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one hospital"):
        write_demo_split(tmp_path, dataset="breast-cancer", hospitals=0)
    with pytest.raises(ValueError, match="unknown demo dataset 'mnist'"):
        write_demo_split(tmp_path, dataset="mnist", hospitals=2)  # type: ignore[arg-type]


def test_the_synthetic_table_holds_out_enough_rows_to_resolve_a_tenth_of_a_point(tmp_path: Path) -> None:
    demo = write_demo_split(tmp_path, dataset="synthetic", hospitals=3)
    schema = load_schema(demo.schema_path)
    assert schema.model == "mlp" and schema.num_classes == 4 and len(schema.features) == 20
    holdout = load_hospital_table(demo.holdout_path, schema)
    assert len(holdout) == 2400  # one row is 0.04 accuracy points
    hospitals = [load_hospital_table(p, schema) for p in demo.hospital_paths]
    assert sum(len(h) for h in hospitals) + len(holdout) == 12_000
    assert abs(float(holdout.features.mean())) < 0.1  # standardised by the schema's constants
    assert write_demo_split(tmp_path / "again", dataset="synthetic", hospitals=3).holdout_path.read_bytes() == (
        demo.holdout_path.read_bytes()
    )
