"""The quantization error SecAgg+ reports bounds what Flower's integer arithmetic really does.

The simulation below runs Flower's own quantize/dequantize and the weighting of
`secaggplus_mod` and `SecAggPlusWorkflow.unmask_stage` (without masks, which cancel exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from client.secagg_client import weighted_overflow
from common.settings import RunSettings
from server.secagg_quantization import error_bound, quantization_facts, quantization_step


def _secagg_average(updates: list[np.ndarray], counts: list[int], *, c: float, q: int, max_weight: float) -> np.ndarray:
    ratios = [round(n / max_weight * q) for n in counts]  # secaggplus_mod: q_ratio
    total = sum(quantize([u * (r / q)], c, q)[0].astype(np.int64) for u, r in zip(updates, ratios, strict=False))
    (value,) = dequantize([total], c, q)  # unmask_stage
    return (value - (len(updates) - 1) * c) * (q / sum(ratios))


@pytest.mark.parametrize(("c", "q", "max_weight"), [(8.0, 2**22, 1000.0), (1.0, 2**10, 500.0), (4.0, 2**16, 150.0)])
def test_the_reported_bound_holds_for_flowers_arithmetic(c: float, q: int, max_weight: float) -> None:
    rng = np.random.default_rng(7)
    counts = [150, 125, 90]
    updates = [rng.uniform(-1.0, 1.0, size=20_000) for _ in counts]
    exact = sum(u * n for u, n in zip(updates, counts, strict=False)) / sum(counts)
    bound = error_bound(clipping_range=c, quantization_range=q, max_weight=max_weight, num_examples=counts)
    error = np.abs(_secagg_average(updates, counts, c=c, q=q, max_weight=max_weight) - exact).max()
    assert error <= bound
    assert error > bound / 20  # the bound is not vacuous: within a small factor of what happens


def test_the_bound_grows_as_weights_shrink_against_max_weight() -> None:
    small = error_bound(clipping_range=8.0, quantization_range=2**22, max_weight=1000.0, num_examples=[100, 100])
    large = error_bound(clipping_range=8.0, quantization_range=2**22, max_weight=1000.0, num_examples=[1000, 1000])
    assert large == pytest.approx(quantization_step(clipping_range=8.0, quantization_range=2**22), rel=1e-6)
    assert small == pytest.approx(10 * large, rel=1e-3)


def test_refusals_with_weight_zero_do_not_count() -> None:
    with_zero = error_bound(clipping_range=8.0, quantization_range=2**22, max_weight=1000.0, num_examples=[100, 0])
    alone = error_bound(clipping_range=8.0, quantization_range=2**22, max_weight=1000.0, num_examples=[100])
    assert with_zero == alone
    with pytest.raises(ValueError, match="positive example count"):
        error_bound(clipping_range=8.0, quantization_range=2**22, max_weight=1000.0, num_examples=[0])


def test_results_json_facts_state_the_step_and_ranges() -> None:
    settings = RunSettings.from_run_config(
        {"schema-path": "s.json", "privacy-mode": "secagg", "clipping-range": 2.0, "quantization-range": 1024}
    )
    facts = quantization_facts(settings)
    assert facts["quantization_step"] == pytest.approx(4.0 / 1024)
    assert facts["clipping_range"] == 2.0 and facts["quantization_range"] == 1024 and facts["modulus_range"] == 2**32


def test_a_hospital_sees_values_that_secagg_would_clip() -> None:
    weights = {"w": np.array([0.5, -3.0, 9.0], dtype=np.float32)}
    # weight 1000/1000: values beyond +-2 are clipped; weight 100/1000 scales them below.
    assert (
        weighted_overflow(weights, num_examples=1000, max_weight=1000.0, clipping_range=2.0, quantization_range=2**22)
        == 2
    )
    assert (
        weighted_overflow(weights, num_examples=100, max_weight=1000.0, clipping_range=2.0, quantization_range=2**22)
        == 0
    )
