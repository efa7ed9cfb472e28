"""FedNova (Wang et al., 2020): averaging updates of unequal local work without over-weighting the longer ones.

Plain FedAvg of models trained for τ_i local steps each optimises a mix of the sites' objectives weighted by
n_i τ_i, not n_i: a site that runs more steps pulls the model further. FedNova averages the per-step update
d_i = (w_global - w_i) / τ_i with the weights p_i = n_i / Σ n, and takes τ_eff = Σ p_i τ_i steps of it:

    w_next = w_global - τ_eff Σ p_i d_i

When every τ_i is equal this is exactly FedAvg (Σ p_i w_i). Used when `round-deadline` schedules unequal
local steps (server/local_work.py) and `deadline-aggregation = "fednova"` (the default is FedAvg: with Adam
locally, scaling a short round up by τ_eff / τ_i overshoots, docs/compute.md); accumulated in float64 like
`server.fedavg`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from server.fedavg import ClientUpdate, fedavg


def effective_steps(updates: Sequence[ClientUpdate]) -> float:
    """τ_eff = Σ p_i τ_i: how many steps of the averaged per-step update the round takes."""
    total = sum(u.num_examples for u in updates)
    return sum(u.num_examples / total * _steps(u) for u in updates)


def _steps(update: ClientUpdate) -> int:
    if update.local_steps is None or update.local_steps < 1:
        raise ValueError(f"FedNova needs each update's local steps; {update.institution} reported {update.local_steps}")
    return update.local_steps


def fednova(updates: Sequence[ClientUpdate], *, reference: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The next global model from `updates` trained from `reference` (the global model they started from).

    Tensors that are not floating point (counters, if a model had any) are averaged as FedAvg does."""
    if not updates:
        raise ValueError("fednova needs at least one update")
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ValueError("fednova needs a positive total sample count")
    tau_eff = effective_steps(updates)
    plain = fedavg(updates)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, ref in reference.items():
        if not np.issubdtype(ref.dtype, np.floating):
            out[name] = plain[name]
            continue
        start = ref.astype(np.float64)
        step = np.zeros(ref.shape, dtype=np.float64)
        for u in updates:
            step += (u.num_examples / total) * (start - u.weights[name].astype(np.float64)) / _steps(u)
        out[name] = (start - tau_eff * step).astype(ref.dtype)
    return out
