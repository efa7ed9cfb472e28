"""How far SecAgg+'s integer arithmetic can move the averaged model, from the run's settings.

Flower's SecAgg+ adds integers, so each hospital (in `secaggplus_mod`) scales its weights by
its quantized weight d_i = round(n_i / max_weight * Q) / Q, clips to +-C, and rounds
stochastically onto Q levels across [-C, C] (one level is s = 2C / Q). The server divides the
unmasked sum by sum(d_i). So per averaged value:

- rounding: each hospital adds less than one level, so |error| < k * s / sum(d_i), which is
  about s * max_weight / (mean examples per hospital): small weights magnify it;
- weights: d_i instead of n_i / max_weight; each value p_i is at most C / d_i (else the client
  refuses, see client/secagg_client.py), so the shift is at most sum_i C / d_i * |w_i - v_i|
  with w, v the normalized d and n;
- clipping: none, since a hospital whose weighted values exceed C refuses the round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.settings import SECAGG_MODULUS, RunSettings


def quantization_step(*, clipping_range: float, quantization_range: int) -> float:
    """One integer level, in model units, before dividing by the total weight."""
    return 2.0 * clipping_range / quantization_range


def quantized_weight(num_examples: int, *, max_weight: float, quantization_range: int) -> float:
    """d_i: the weight the mod multiplies a hospital's vector by, and the server divides the sum by the total of."""
    return round(num_examples / max_weight * quantization_range) / quantization_range


def error_bound(
    *, clipping_range: float, quantization_range: int, max_weight: float, num_examples: Sequence[int]
) -> float:
    """Largest absolute difference, per model value, between SecAgg+'s average of these hospitals'
    updates and the exact FedAvg of the same updates."""
    counts = [n for n in num_examples if n > 0]
    if not counts:
        raise ValueError("error_bound needs at least one hospital with a positive example count")
    step = quantization_step(clipping_range=clipping_range, quantization_range=quantization_range)
    quantized = [quantized_weight(n, max_weight=max_weight, quantization_range=quantization_range) for n in counts]
    total_q, total_n = sum(quantized), float(sum(counts))
    if total_q <= 0:
        raise ValueError(
            f"example counts {counts} are too small against max-weight {max_weight:g}: every quantized weight is 0"
        )
    rounding = len(counts) * step / total_q
    weighting = sum(
        clipping_range / d * abs(d / total_q - n / total_n) for d, n in zip(quantized, counts, strict=False) if d > 0
    )
    return rounding + weighting


def quantization_facts(settings: RunSettings) -> dict[str, Any]:
    """What results.json says about the chosen ranges before any round ran."""
    step = quantization_step(clipping_range=settings.clipping_range, quantization_range=settings.quantization_range)
    return {
        "clipping_range": settings.clipping_range,
        "quantization_range": settings.quantization_range,
        "modulus_range": SECAGG_MODULUS,
        "max_weight": settings.max_weight,
        "quantization_step": step,
        # Every hospital with max_weight examples: each averaged value is off by less than one step.
        "error_bound_at_max_weight": step,
        "error_bound_note": "per averaged value: < quantization_step * max_weight / (mean training examples per "
        "hospital); each round records its own bound",
    }
