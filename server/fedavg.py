"""Weighted federated averaging over validated plaintext updates."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClientUpdate:
    institution: str
    node_id: int
    weights: OrderedDict[str, np.ndarray]
    num_examples: int
    local_steps: int | None = None  # the steps it trained (its work report); FedNova needs them (server/fednova.py)


def fedavg(updates: Sequence[ClientUpdate]) -> OrderedDict[str, np.ndarray]:
    """Average weighted by sample count (McMahan et al.), accumulated in float64.

    Accumulating in float64 keeps the result independent of the order replies
    arrive in, up to the final cast.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ValueError("fedavg needs a positive total sample count")
    first = updates[0].weights
    averaged: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, ref in first.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for update in updates:
            acc += update.weights[name].astype(np.float64) * (update.num_examples / total)
        averaged[name] = acc.astype(ref.dtype)
    return averaged


def weighted_mean(values: Sequence[tuple[float, int]]) -> float | None:
    """Mean of (value, weight) pairs; None when nothing was reported."""
    total = sum(w for _, w in values)
    if total <= 0:
        return None
    return float(sum(v * w for v, w in values) / total)
