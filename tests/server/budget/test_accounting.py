"""The service's epsilon recomputation agrees with the hospitals' own accountant (Opacus via epsilon_of)."""

from __future__ import annotations

import pytest

from common.dp_event import epsilon_of
from server.budget.core import accounting

HISTORY = [(1.0, 0.05, 40), (1.1, 0.02, 100), (1.0, 0.05, 40), (0.8, 0.1, 10)]


def _summary(history: list[tuple[float, float, int]]) -> dict[tuple[float, float], int]:
    out: dict[tuple[float, float], int] = {}
    for noise, q, steps in history:
        out = accounting.with_event(out, noise_multiplier=noise, sample_rate=q, steps=steps)
    return out


@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_rdp_shortcut_equals_opacus(delta: float) -> None:
    for n in range(1, len(HISTORY) + 1):
        ours = accounting.cumulative_epsilon(_summary(HISTORY[:n]), accountant="rdp", delta=delta)
        assert ours == pytest.approx(epsilon_of(HISTORY[:n], accountant="rdp", delta=delta), rel=1e-12)


def test_prv_on_the_summarized_history_equals_opacus() -> None:
    history = HISTORY[:3]
    ours = accounting.cumulative_epsilon(_summary(history), accountant="prv", delta=1e-5)
    assert ours == pytest.approx(epsilon_of(history, accountant="prv", delta=1e-5), rel=1e-6)


def test_nothing_spent_is_zero_and_unknown_accountants_are_refused() -> None:
    assert accounting.cumulative_epsilon({}, accountant="rdp", delta=1e-5) == 0.0
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        accounting.cumulative_epsilon({(1.0, 0.1): 1}, accountant="gdp", delta=1e-5)


def test_under_reporting_tolerance() -> None:
    assert not accounting.under_reported(reported=3.0, recomputed=3.0)
    assert not accounting.under_reported(reported=3.0 * (1 - 1e-9), recomputed=3.0)
    assert accounting.under_reported(reported=2.99, recomputed=3.0)
    assert not accounting.under_reported(reported=5.0, recomputed=3.0)  # over-reporting is the client's right
