"""Built-in demo data: scikit-learn's data sets split non-IID across hospitals.

Label skew comes from a Dirichlet draw per class, the usual way FL papers mimic
hospitals whose patient mix differs. A held-out slice goes to no hospital, so the
final model can be scored on rows no site ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from common.schema import DatasetSchema, FeatureSpec, save_schema

if TYPE_CHECKING:
    import pandas as pd

DemoDataset = Literal["breast-cancer", "digits", "images"]  # images: digits as PNG folders (common.demo_images)
# Tests and benchmarks only (not a `fedcare demo` choice): a generated table large enough that its held-out
# slice resolves a difference of one accuracy point (`_synthetic`).
SyntheticDataset = Literal["synthetic"]
SYNTHETIC_ROWS = 12_000


@dataclass(frozen=True)
class DemoSplit:
    schema_path: Path
    hospital_paths: list[Path]
    holdout_path: Path


def _synthetic() -> tuple[pd.DataFrame, DatasetSchema]:
    """scikit-learn's `make_classification`: 12,000 rows, 20 features, 4 classes of 2 clusters each.

    Breast cancer holds out 113 rows, so one row is 0.9 accuracy points and a 1-point claim cannot be resolved;
    here 2,400 held-out rows make a row 0.04 points. The classes overlap (`class_sep`, 2% flipped labels), so a
    model does not reach 100% and training choices still show in the score. Fixed seed: the same table always.
    """
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=SYNTHETIC_ROWS,
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.02,
        random_state=0,
    )
    frame = pd.DataFrame(np.round(x, 4), columns=[f"x{i}" for i in range(x.shape[1])])  # 4 decimals: small CSVs
    specs = [FeatureSpec(name=c, center=float(frame[c].mean()), scale=float(frame[c].std())) for c in frame.columns]
    frame["target"] = y
    return frame, DatasetSchema(label="target", num_classes=4, features=specs, model="mlp")


def _load(dataset: DemoDataset | SyntheticDataset) -> tuple[pd.DataFrame, DatasetSchema]:
    # scikit-learn and pandas here, not at the top: every `fedcare` command imports this module for the data set
    # names, and they cost 1.4 s of CPU (a hospital's `fedcare node start` paid it for nothing).
    from sklearn.datasets import load_breast_cancer, load_digits

    if dataset == "synthetic":
        return _synthetic()
    if dataset == "breast-cancer":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
        features = [c for c in frame.columns if c != "target"]
        specs = [
            FeatureSpec(name=c, center=float(frame[c].mean()), scale=float(frame[c].std() or 1.0)) for c in features
        ]
        schema = DatasetSchema(label="target", num_classes=2, features=specs, model="mlp")
        return frame, schema
    if dataset == "digits":
        bunch = load_digits(as_frame=True)
        frame = bunch.frame
        features = [c for c in frame.columns if c != "target"]
        specs = [FeatureSpec(name=c, center=8.0, scale=8.0) for c in features]  # pixels are 0..16
        schema = DatasetSchema(label="target", num_classes=10, features=specs, model="cnn", input_shape=[1, 8, 8])
        return frame, schema
    raise ValueError(f"unknown demo dataset {dataset!r}; choose breast-cancer, digits or synthetic")


def dirichlet_partition(labels: np.ndarray, *, parts: int, alpha: float, seed: int, min_size: int) -> list[np.ndarray]:
    """Row indices per part, label proportions drawn from Dirichlet(alpha); redrawn until every part has min_size."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        buckets: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * parts)) * len(idx)).astype(int)[:-1]
            for bucket, chunk in zip(buckets, np.split(idx, cuts), strict=False):
                bucket.extend(chunk.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [np.sort(np.array(b)) for b in buckets]
    raise ValueError(f"could not split into {parts} parts of at least {min_size} rows; use fewer hospitals")


def write_demo_split(
    out_dir: Path,
    *,
    dataset: DemoDataset | SyntheticDataset,
    hospitals: int,
    seed: int = 7,
    alpha: float = 0.5,
    holdout: float = 0.2,
) -> DemoSplit:
    if hospitals < 1:
        raise ValueError("need at least one hospital")
    if dataset == "images":
        from common.demo_images import write_image_demo_split  # Pillow only for the image demo

        return write_image_demo_split(out_dir, hospitals=hospitals, seed=seed, alpha=alpha, holdout=holdout)
    frame, schema = _load(dataset)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_holdout = int(len(frame) * holdout)
    holdout_frame, pool = frame.iloc[order[:n_holdout]], frame.iloc[order[n_holdout:]].reset_index(drop=True)
    # Every hospital gets at least a third of an even share: DP needs enough rows per site.
    min_size = max(20, len(pool) // (3 * hospitals))
    parts = dirichlet_partition(pool["target"].to_numpy(), parts=hospitals, alpha=alpha, seed=seed, min_size=min_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    schema_path = out_dir / "schema.json"
    save_schema(schema, schema_path)
    holdout_path = out_dir / "holdout.csv"
    holdout_frame.to_csv(holdout_path, index=False)
    paths = []
    for i, rows in enumerate(parts, start=1):
        path = out_dir / f"hospital-{i}.csv"
        pool.iloc[rows].to_csv(path, index=False)
        paths.append(path)
    return DemoSplit(schema_path=schema_path, hospital_paths=paths, holdout_path=holdout_path)
