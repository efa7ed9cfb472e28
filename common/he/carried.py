"""HE mode with a stateful server optimizer: the optimizer's state travels inside the encrypted sum.

The server cannot read the round's average, so it cannot take a FedAvgM or FedAdam step; every hospital
takes it after decrypting, the same deterministic step (`common.server_optimizer`). That step needs three
things besides the average: the global model it starts from, the optimizer's buffers, and its step count.
Where they live decides what happens to a hospital that missed a round:

- kept by each hospital, they go stale the moment it misses one, and from then on it trains a different
  model from everyone else;
- kept by the server in clear, they would leak the model (the momentum is a sum of model differences);
- kept by the server as ciphertexts it updates itself, they would need a ciphertext-times-scalar product
  (`momentum * m`), which our depth-0 CKKS parameters (4096, [60, 40]) cannot do, and FedAdam's square
  and square root are beyond any CKKS here.

So they ride in the ciphertext. Each hospital encrypts, times its sample count as always, the vector
`[trained weights | global model it started from | buffers | step count]`. Every honest hospital computed
the same global model, buffers and count, so the server's sum divided by the total is that state exactly
(CKKS noise aside, ~1e-9), next to the FedAvg average of the trained weights. The next message carries the
sum, so any hospital, including one that missed rounds, decrypts the whole state and takes the step: no
hospital can diverge, and the server still adds ciphertexts it cannot read. The cost is upload: 3x the
model with FedAvgM, 4x with FedAdam. With FedAvg nothing is carried and the wire is unchanged.

With `round-deadline` (FedNova, common/fednova_sum.py) the base rides along with FedAvg too (2x the model): the
update block holds each hospital's per-step model, and the hospital that decrypts needs the global model it was
taken from to finish the step (`w_next = base - τ_eff (base - average)`, τ_eff from the sum's clear header).
Both blocks are float64 then, so the per-step difference is not rounded away before the τ_eff product.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from common.fednova_sum import from_per_step_average, per_step_model
from common.server_optimizer import ServerOptimizer, Weights

UPDATE, BASE, STEPS = "update", "base", "server-steps"


def carry_template(model: Weights, optimizer: ServerOptimizer, *, fednova: bool = False) -> Weights:
    """The tensors a hospital encrypts, by name, shape and dtype (the sum's layout); the model's own with FedAvg
    (and no FedNova)."""
    if not optimizer.stateful and not fednova:
        return OrderedDict(model)
    out: Weights = OrderedDict()
    for prefix in (UPDATE, BASE):
        for k, v in model.items():
            dtype = np.asarray(v).dtype
            if fednova and np.issubdtype(dtype, np.floating):
                dtype = np.dtype(np.float64)
            out[f"{prefix}/{k}"] = np.zeros(np.shape(v), dtype=dtype)
    if optimizer.stateful:
        for slot in optimizer.slots:
            out.update((f"{slot}/{k}", np.zeros(np.shape(v), dtype=np.float64)) for k, v in model.items())
        out[STEPS] = np.zeros(1, dtype=np.float64)
    return out


def pack(*, trained: Weights, base: Weights, optimizer: ServerOptimizer, local_steps: int | None = None) -> Weights:
    """What a hospital encrypts after training from `base`, the global model `optimizer` last produced;
    `local_steps`: FedNova (round-deadline), the update goes in as its per-step model."""
    fednova = local_steps is not None
    if not optimizer.stateful and not fednova:
        return OrderedDict(trained)
    out = carry_template(trained, optimizer, fednova=fednova)
    update = per_step_model(trained, base=base, local_steps=local_steps) if local_steps is not None else trained
    for k in trained:  # in the template's dtypes: they are part of the layout the server checks
        out[f"{UPDATE}/{k}"] = np.asarray(update[k]).astype(out[f"{UPDATE}/{k}"].dtype)
        out[f"{BASE}/{k}"] = np.asarray(base[k]).astype(out[f"{BASE}/{k}"].dtype)
    if not optimizer.stateful:
        return out
    for slot in optimizer.slots:
        buffer = optimizer.buffers.get(slot)
        if buffer is not None:  # before the first step the buffers are zero, as the template holds them
            out.update((f"{slot}/{k}", np.asarray(buffer[k], dtype=np.float64)) for k in trained)
    out[STEPS] = np.array([float(optimizer.steps)])
    return out


def next_global(
    averaged: Weights, *, model: Weights, optimizer: ServerOptimizer, effective_steps: float | None = None
) -> Weights:
    """The global model from a decrypted, divided sum: the FedAvg average itself, or the server step taken
    from the carried base with the carried state (which `optimizer` takes up); `effective_steps` (FedNova,
    from the sum's header): the average is of per-step models, and τ_eff steps of it are taken first."""
    if not optimizer.stateful and effective_steps is None:
        return OrderedDict(averaged)
    base = OrderedDict((k, np.asarray(averaged[f"{BASE}/{k}"]).astype(np.asarray(model[k]).dtype)) for k in model)
    average = OrderedDict((k, np.asarray(averaged[f"{UPDATE}/{k}"])) for k in model)
    if effective_steps is not None:
        average = from_per_step_average(average, base=base, effective_steps=effective_steps)
    if not optimizer.stateful:
        return average
    steps = int(np.rint(float(np.asarray(averaged[STEPS]).ravel()[0])))
    if steps < 0:
        raise ValueError(f"the carried server-optimizer step count decrypts to {steps}")
    optimizer.restore(
        {
            "optimizer": optimizer.name,
            "steps": steps,
            "buffers": {
                slot: OrderedDict((k, np.asarray(averaged[f"{slot}/{k}"])) for k in model) for slot in optimizer.slots
            }
            if steps
            else {},
        },
        template=model,
    )
    return optimizer.step(current=base, average=average)
