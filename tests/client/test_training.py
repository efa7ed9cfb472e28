"""Plain local training and scoring, on a tiny problem whose answers are known and on breast cancer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from client.mixed_precision import DPConfigError
from client.training import evaluate, make_loader, train_plain
from common.data import HospitalData
from common.models import TabularMLP

CPU = torch.device("cpu")


def _separable(n: int = 64, seed: int = 0) -> HospitalData:
    """Two clusters on either side of x0 = 0; the label is the side."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    features = rng.normal(scale=0.5, size=(n, 2)).astype(np.float32)
    features[:, 0] += np.where(labels == 1, 2.0, -2.0)
    return HospitalData(features=features, labels=labels.astype(np.int64))


def _sign_model() -> nn.Module:
    """Logits (-x0, x0): predicts class 1 exactly when x0 > 0."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    return model


def test_training_lowers_the_loss_on_a_separable_problem() -> None:
    torch.manual_seed(0)
    data = _separable()
    model = TabularMLP(in_features=2, num_classes=2, hidden=16)
    before = evaluate(model, data, device=CPU)
    outcome = train_plain(model, data, batch_size=16, epochs=15, learning_rate=0.01, amp="off", device=CPU, seed=1)
    after = evaluate(model, data, device=CPU)
    assert math.isfinite(outcome.loss)
    assert after.loss < before.loss / 2
    assert after.accuracy >= 0.95


def test_training_with_no_rows_is_refused_and_changes_nothing() -> None:
    model = _sign_model()
    empty = HospitalData(features=np.zeros((0, 2), np.float32), labels=np.zeros(0, np.int64))
    with pytest.raises(DPConfigError, match="no training rows"):
        train_plain(model, empty, batch_size=4, epochs=2, learning_rate=1.0, amp="off", device=CPU, seed=0)
    assert torch.equal(model.weight, _sign_model().weight)


def test_evaluate_counts_correct_examples_exactly() -> None:
    features = np.array([[1.0, 0.0], [2.0, 5.0], [-1.0, 0.0], [-3.0, 1.0], [0.5, 0.0]], np.float32)
    labels = np.array([1, 1, 0, 1, 0])  # the last two are predicted wrongly
    data = HospitalData(features=features, labels=labels)
    score = evaluate(_sign_model(), data, device=CPU, batch_size=2)
    assert score.examples == 5
    assert score.accuracy == pytest.approx(3 / 5)
    assert 0.0 <= score.accuracy <= 1.0
    with torch.no_grad():
        expected = nn.functional.cross_entropy(_sign_model()(torch.from_numpy(features)), torch.from_numpy(labels))
    assert score.loss == pytest.approx(float(expected), rel=1e-6)


def test_evaluate_does_not_depend_on_the_batch_size() -> None:
    data, model = _separable(n=37), TabularMLP(in_features=2, num_classes=2)
    whole, pieces = evaluate(model, data, device=CPU), evaluate(model, data, device=CPU, batch_size=5)
    assert whole.accuracy == pieces.accuracy and whole.examples == pieces.examples == 37
    assert whole.loss == pytest.approx(pieces.loss, rel=1e-5)


def test_the_loader_order_is_fixed_by_its_seed() -> None:
    data = HospitalData(features=np.arange(20, dtype=np.float32).reshape(10, 2), labels=np.arange(10))
    order = lambda seed: torch.cat([y for _, y in make_loader(data, batch_size=3, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(4), order(4))
    assert not torch.equal(order(4), order(5))
    assert sorted(order(4).tolist()) == list(range(10))


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_train_plain_trains_with_every_precision(breast_cancer: HospitalData, amp: str) -> None:
    torch.manual_seed(0)
    model = TabularMLP(in_features=30, num_classes=2)
    before = evaluate(model, breast_cancer, device=CPU).loss
    outcome = train_plain(
        model, breast_cancer, batch_size=64, epochs=3, learning_rate=5e-3, amp=amp, device=CPU, seed=0
    )
    assert (outcome.sample_rate, outcome.noise_multiplier, outcome.grad_sample_mode) == (None, None, None)
    assert outcome.amp == amp
    assert outcome.steps + outcome.skipped_steps == 3 * math.ceil(569 / 64)
    assert evaluate(model, breast_cancer, device=CPU).loss < 0.7 * before
