"""FedNova against a hand-computed example, and equal to FedAvg when every site took the same steps."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from server.fedavg import ClientUpdate, fedavg
from server.fednova import effective_steps, fednova


def _update(name: str, w: list[float], n: int, steps: int | None) -> ClientUpdate:
    return ClientUpdate(name, 0, OrderedDict(w=np.array(w, np.float32)), n, steps)


def test_fednova_matches_a_hand_computed_round() -> None:
    # global 1.0; site a (n=1, 1 step) reached 0.0, site b (n=3, 4 steps) reached -1.0.
    # p = (1/4, 3/4); per-step updates d = (1, 0.5); tau_eff = 1/4 + 3 = 3.25;
    # next = 1 - 3.25 * (1/4 * 1 + 3/4 * 0.5) = 1 - 3.25 * 0.625 = -1.03125  (FedAvg: -0.75)
    updates = [_update("a", [0.0], 1, 1), _update("b", [-1.0], 3, 4)]
    reference = OrderedDict(w=np.array([1.0], np.float32))
    assert effective_steps(updates) == pytest.approx(3.25)
    assert fednova(updates, reference=reference)["w"] == pytest.approx([-1.03125])
    assert fedavg(updates)["w"] == pytest.approx([-0.75])


def test_fednova_is_fedavg_when_every_site_took_the_same_steps() -> None:
    rng = np.random.default_rng(0)
    reference = OrderedDict(w=rng.normal(size=(4, 3)).astype(np.float32), b=rng.normal(size=3).astype(np.float32))
    updates = [
        ClientUpdate(
            f"h{i}",
            i,
            OrderedDict((k, v + rng.normal(size=v.shape).astype(np.float32)) for k, v in reference.items()),
            n,
            7,
        )
        for i, n in enumerate((10, 25, 40))
    ]
    nova, avg = fednova(updates, reference=reference), fedavg(updates)
    for name in reference:
        np.testing.assert_allclose(nova[name], avg[name], rtol=1e-5, atol=1e-6)


def test_fednova_refuses_an_update_without_its_steps() -> None:
    with pytest.raises(ValueError, match="local steps"):
        fednova([_update("a", [0.0], 1, None)], reference=OrderedDict(w=np.array([1.0], np.float32)))
