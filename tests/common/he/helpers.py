"""A small model to encrypt."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def model(seed: int = 0, scale: float = 1.0) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        [
            ("w1", (rng.normal(size=(30, 64)) * scale).astype(np.float32)),
            ("b1", rng.normal(size=64).astype(np.float32)),
            ("w2", (rng.normal(size=(64, 2)) * scale).astype(np.float32)),
        ]
    )


def size(weights: OrderedDict[str, np.ndarray]) -> int:
    return sum(w.size for w in weights.values())
