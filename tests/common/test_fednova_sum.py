"""FedNova through a sum: hospitals' per-step models, summed as the modes sum them, give server.fednova's model."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from common.fednova_sum import effective_steps, from_per_step_average, per_step_model
from server.fedavg import ClientUpdate, fedavg
from server.fednova import effective_steps as plain_effective_steps
from server.fednova import fednova

COUNTS = (30, 50, 20)


def _round(steps: tuple[int, ...], *, seed: int = 0) -> tuple[OrderedDict[str, np.ndarray], list[ClientUpdate]]:
    """A global model and three hospitals' updates, each moved further the more steps it took."""
    rng = np.random.default_rng(seed)
    base = OrderedDict(w=rng.normal(size=(4, 3)).astype(np.float32), b=rng.normal(size=3).astype(np.float32))
    updates = [
        ClientUpdate(
            f"h{i}",
            i,
            OrderedDict((k, (v - 0.01 * t * rng.normal(size=v.shape)).astype(np.float32)) for k, v in base.items()),
            n,
            t,
        )
        for i, (n, t) in enumerate(zip(COUNTS, steps, strict=True))
    ]
    return base, updates


def _through_the_sum(base: OrderedDict[str, np.ndarray], updates: list[ClientUpdate]) -> OrderedDict[str, np.ndarray]:
    """What the modes compute: each hospital's per-step model, the example-weighted average (the only thing the
    server or, in HE, the decrypting hospital reads), then τ_eff from the clear counts and steps."""
    total = sum(u.num_examples for u in updates)
    sent = [per_step_model(u.weights, base=base, local_steps=u.local_steps or 0) for u in updates]
    average = OrderedDict(
        (k, sum(s[k] * (u.num_examples / total) for s, u in zip(sent, updates, strict=True))) for k in base
    )
    tau = effective_steps([(u.num_examples, u.local_steps or 0) for u in updates])
    return from_per_step_average(average, base=base, effective_steps=tau)


def test_the_sum_of_per_step_models_gives_fednova_with_unequal_steps() -> None:
    base, updates = _round((3, 40, 1))
    nova, mine, avg = fednova(updates, reference=base), _through_the_sum(base, updates), fedavg(updates)
    assert effective_steps([(u.num_examples, u.local_steps or 0) for u in updates]) == pytest.approx(
        plain_effective_steps(updates)
    )
    for k in base:
        assert mine[k].dtype == base[k].dtype
        np.testing.assert_allclose(mine[k], nova[k], rtol=1e-6, atol=1e-6)
        assert np.abs(mine[k] - avg[k]).max() > 1e-3  # and it is not FedAvg: the 40-step site no longer dominates


def test_equal_steps_give_fedavg() -> None:
    base, updates = _round((7, 7, 7), seed=1)
    mine, avg = _through_the_sum(base, updates), fedavg(updates)
    for k in base:
        np.testing.assert_allclose(mine[k], avg[k], rtol=1e-6, atol=1e-6)


def test_a_per_step_model_needs_a_step_and_effective_steps_need_every_sites_steps() -> None:
    base, updates = _round((1, 2, 3))
    with pytest.raises(ValueError, match="at least 1 local step"):
        per_step_model(updates[0].weights, base=base, local_steps=0)
    with pytest.raises(ValueError, match="local steps"):
        effective_steps([(10, 3), (20, 0)])
    with pytest.raises(ValueError, match=">= 1"):
        from_per_step_average(base, base=base, effective_steps=float("nan"))
