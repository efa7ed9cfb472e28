"""Weighted FedAvg, checked against hand-computed averages."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest

from server.fedavg import ClientUpdate, fedavg, weighted_mean


def _update(name: str, n: int, **weights: list[float]) -> ClientUpdate:
    return ClientUpdate(
        institution=name,
        node_id=hash(name) % 1000,
        num_examples=n,
        weights=OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in weights.items()),
    )


def test_two_clients_are_weighted_by_their_example_counts() -> None:
    # (1*1 + 4*3) / 4 = 3.25 and (2*1 + 8*3) / 4 = 6.5
    result = fedavg([_update("A", 1, w=[1.0, 2.0], b=[0.0]), _update("B", 3, w=[4.0, 8.0], b=[4.0])])
    assert list(result) == ["w", "b"]
    np.testing.assert_array_equal(result["w"], [3.25, 6.5])
    np.testing.assert_array_equal(result["b"], [3.0])


def test_three_clients_are_weighted_by_their_example_counts() -> None:
    updates = [
        _update("A", 2, w=[[0.0, 1.0], [2.0, 3.0]]),
        _update("B", 3, w=[[3.0, 1.0], [2.0, 3.0]]),
        _update("C", 5, w=[[10.0, 1.0], [-2.0, 3.0]]),
    ]
    # Top-left: (0*2 + 3*3 + 10*5) / 10 = 5.9; bottom-left: (2*2 + 2*3 - 2*5) / 10 = 0.
    expected = np.array([[5.9, 1.0], [0.0, 3.0]], dtype=np.float32)
    result = fedavg(updates)
    np.testing.assert_allclose(result["w"], expected, rtol=0, atol=1e-6)
    assert result["w"].dtype == np.float32


def test_a_single_client_gets_its_own_weights_back() -> None:
    update = _update("A", 17, w=[0.1, -0.2, 0.3], b=[1e-8])
    result = fedavg([update])
    for name, value in update.weights.items():
        np.testing.assert_array_equal(result[name], value)


def test_the_result_does_not_depend_on_reply_order_beyond_float32_rounding() -> None:
    """float64 sums still differ in the last bit by order; after the cast that is at most one float32 ulp."""
    rng = np.random.default_rng(0)
    updates = [
        ClientUpdate(f"H{i}", i, OrderedDict(w=rng.normal(size=(4, 4)).astype(np.float32)), n)
        for i, n in enumerate([7, 130, 41])
    ]
    results = [fedavg(list(order))["w"] for order in itertools.permutations(updates)]
    for other in results[1:]:
        np.testing.assert_array_max_ulp(results[0], other, maxulp=1)


def test_an_empty_round_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one update"):
        fedavg([])


def test_a_zero_total_example_count_is_refused() -> None:
    with pytest.raises(ValueError, match="positive total sample count"):
        fedavg([_update("A", 0, w=[1.0])])


def test_weighted_mean() -> None:
    assert weighted_mean([(0.5, 1), (1.0, 3)]) == pytest.approx(0.875)
    assert weighted_mean([(0.25, 10)]) == 0.25
    assert weighted_mean([]) is None
    assert weighted_mean([(1.0, 0)]) is None
