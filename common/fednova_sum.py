"""FedNova when the server sees only a sum (SecAgg+, HE): each hospital pre-scales, the sum's reader finishes.

FedNova (server/fednova.py) needs each update divided by its own local steps τ_i:

    w_next = w_global - τ_eff Σ p_i d_i,   d_i = (w_global - w_i) / τ_i,   p_i = n_i / Σ n,   τ_eff = Σ p_i τ_i

A server that only learns Σ p_i x_i cannot divide each x_i by τ_i, so the hospital does it before the sum:
it sends its *per-step model* `w_global - d_i` (`per_step_model`). The modes' usual example-weighted sum then
is `w_global - Σ p_i d_i`, and whoever reads the sum in clear takes τ_eff steps of it (`from_per_step_average`):
the server in SecAgg+, every hospital after decrypting in HE. τ_eff needs only the n_i and τ_i, which reach
the server in clear in every mode (the sample count, and the work report's steps, capped by the DP event).

With equal τ_i this is exactly FedAvg (Σ p_i w_i), up to the float64 arithmetic. The pre-scaling is
post-processing of the hospital's own DP-noised model, so it leaves its privacy accounting as it is.
Non-float tensors (counters, if a model had any) travel and average as FedAvg does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

Weights = OrderedDict[str, np.ndarray]


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def per_step_model(trained: Mapping[str, np.ndarray], *, base: Mapping[str, np.ndarray], local_steps: int) -> Weights:
    """What a hospital that trained `base` into `trained` in `local_steps` steps puts into the sum (float64)."""
    if local_steps < 1:
        raise ValueError(
            f"FedNova needs at least 1 local step to normalise an update by; this round took {local_steps}"
        )
    out: Weights = OrderedDict()
    for name, w in trained.items():
        if not _is_float(w):
            out[name] = np.asarray(w)
            continue
        start = np.asarray(base[name], dtype=np.float64)
        out[name] = start - (start - np.asarray(w, dtype=np.float64)) / local_steps
    return out


def from_per_step_average(
    average: Mapping[str, np.ndarray], *, base: Mapping[str, np.ndarray], effective_steps: float
) -> Weights:
    """The FedNova model from the example-weighted average of the per-step models, in `base`'s dtypes."""
    if not (np.isfinite(effective_steps) and effective_steps >= 1):
        raise ValueError(f"FedNova's effective steps must be a finite number >= 1, got {effective_steps}")
    out: Weights = OrderedDict()
    for name, ref in base.items():
        ref = np.asarray(ref)
        avg = np.asarray(average[name]).reshape(ref.shape)
        if not _is_float(ref):
            out[name] = avg.astype(ref.dtype)
            continue
        start = ref.astype(np.float64)
        out[name] = (start - effective_steps * (start - avg.astype(np.float64))).astype(ref.dtype)
    return out


def effective_steps(contributions: Sequence[tuple[float, int]]) -> float:
    """τ_eff = Σ p_i τ_i over (weight, local steps) pairs, p_i the weights normalised: the same weights the sum
    used (the sample counts; in SecAgg+ their quantized form), so that equal steps give FedAvg exactly."""
    total = float(sum(w for w, _ in contributions))
    if not contributions or total <= 0:
        raise ValueError("FedNova's effective steps need at least one contribution of positive weight")
    if any(steps < 1 for _, steps in contributions):
        raise ValueError(f"FedNova needs each contribution's local steps (>= 1); got {[s for _, s in contributions]}")
    return sum(w * steps for w, steps in contributions) / total
