"""The metrics vector a hospital adds into the aggregate, and the federation figures read back from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.site_metrics import FederationFigures, SiteMetrics
from server.fedavg import weighted_mean

# (validation loss, accuracy, validation rows, training loss, training rows) of three hospitals
SITES = [(0.9, 0.045, 22, 0.8, 90), (0.3, 0.95, 30, 0.25, 120), (0.5, 0.8, 37, 0.4, 150)]


def _site(loss: float, acc: float, rows: int, train_loss: float, n: int) -> SiteMetrics:
    return SiteMetrics.of(
        eval_loss=loss, eval_accuracy=acc, eval_examples=rows, train_loss=train_loss, train_examples=n
    )


def test_the_aggregate_of_per_example_vectors_gives_the_example_weighted_means() -> None:
    # What HE adds (n * vector / n) and what SecAgg+ averages (weights n): the divisor cancels either way.
    summed = sum(_site(*s).per_example(s[4]) * s[4] for s in SITES)
    for aggregate in (summed, summed / sum(s[4] for s in SITES)):
        figures = FederationFigures.from_aggregate(aggregate, server_round=3)
        assert figures.server_round == 3
        correct = sum(round(acc * rows) for _, acc, rows, _, _ in SITES)
        assert figures.accuracy == pytest.approx(correct / sum(s[2] for s in SITES))
        assert figures.accuracy == pytest.approx(weighted_mean([(s[1], s[2]) for s in SITES]), abs=1e-2)
        assert figures.loss == pytest.approx(weighted_mean([(s[0], s[2]) for s in SITES]))
        assert figures.train_loss == pytest.approx(weighted_mean([(s[3], s[4]) for s in SITES]))


def test_a_training_loss_that_is_not_finite_adds_nothing_and_a_validation_loss_that_is_not_is_refused() -> None:
    skipped = SiteMetrics.of(eval_loss=0.5, eval_accuracy=0.5, eval_examples=10, train_loss=math.nan, train_examples=50)
    assert (skipped.train_loss_sum, skipped.train_examples) == (0.0, 0.0)
    scores_only = FederationFigures.from_aggregate(skipped.per_example(50), server_round=1)
    assert scores_only.train_loss is None and scores_only.loss == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scores out of range"):
        SiteMetrics.of(eval_loss=math.inf, eval_accuracy=0.5, eval_examples=10)


def test_figures_travel_as_a_config_record_and_impossible_ones_are_refused() -> None:
    figures = FederationFigures(server_round=2, loss=0.4, accuracy=0.9)
    record = figures.as_record()
    assert record == {"round": 2, "loss": 0.4, "accuracy": 0.9}  # an unknown figure is left out
    assert FederationFigures.from_record(record) == figures
    with pytest.raises(ValueError, match="accuracy"):
        FederationFigures.from_record({"round": 2, "accuracy": 1.5})
    with pytest.raises(ValueError, match="loss"):
        FederationFigures.from_record({"round": 2, "loss": float("nan")})
    assert FederationFigures.from_aggregate(np.zeros(5), server_round=1) == FederationFigures(server_round=1)
