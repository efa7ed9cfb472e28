"""The run settings the demo chooses per built-in data set, where the federation's defaults do not fit.

The federation's defaults (`common.settings.TrainingSettings`, pyproject.toml) were tuned on breast
cancer's 30-feature table. Digits is a CNN over 8x8 images with ten classes and about 380 training rows
per hospital: under DP-SGD it needs larger batches (a lower noise per step), a smaller learning rate for
local Adam, and more rounds. The utility bench (`bench/utility.py`) runs the same table, so the figures in
docs/benchmarks.md are the ones `fedcare demo` gets. A new built-in data set (the image task) adds a row.
"""

from __future__ import annotations

from typing import Any

# Run-config keys (kebab-case, as in pyproject.toml); anything not named keeps the federation's default.
DATASET_RUN_CONFIG: dict[str, dict[str, Any]] = {
    "breast-cancer": {"num-rounds": 5},
    "digits": {"num-rounds": 15, "batch-size": 128, "local-epochs": 2, "learning-rate": 0.02},
    # The built-in image task (docs/tasks.md): the demo's digits as 16x16 PNGs through the GroupNorm ResNet. Digits'
    # settings won here too (docs/benchmarks.md, "The image task under DP"): batch 16 with lr 0.03 stays near chance.
    "images": {"num-rounds": 15, "batch-size": 128, "local-epochs": 2, "learning-rate": 0.02},
}


def demo_run_config(dataset: str) -> dict[str, Any]:
    """The demo's run-config overrides for `dataset` (a copy: callers add to it)."""
    try:
        return dict(DATASET_RUN_CONFIG[dataset])
    except KeyError:
        raise ValueError(f"no demo settings for data set {dataset!r}; known: {', '.join(DATASET_RUN_CONFIG)}") from None
