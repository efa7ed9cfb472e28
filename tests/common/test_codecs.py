"""Weights in and out of Flower records, and the gate every update must pass."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from opacus import GradSampleModule

from common.codecs import InvalidUpdate, check_update, from_numpy, to_numpy, to_record, to_state_dict
from common.models import TabularMLP


def test_to_record_strips_the_opacus_prefix() -> None:
    model = TabularMLP(in_features=3, num_classes=2)
    wrapped = GradSampleModule(model).state_dict()
    assert all(k.startswith("_module.") for k in wrapped)
    record = to_record(wrapped)
    assert list(record) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(record[name].numpy(), tensor.numpy())


def test_to_record_only_strips_a_leading_prefix() -> None:
    record = to_record({"net._module.w": torch.ones(1), "_module.b": torch.zeros(1)})
    assert list(record) == ["net._module.w", "b"]


def test_to_record_accepts_tensors_that_require_grad() -> None:
    record = to_record(OrderedDict(w=torch.ones(2, requires_grad=True)))
    np.testing.assert_array_equal(record["w"].numpy(), [1.0, 1.0])


def test_numpy_round_trip_keeps_names_order_values_and_dtype() -> None:
    weights = OrderedDict(
        z=np.arange(6, dtype=np.float32).reshape(2, 3),
        a=np.array([0.5, -1.5], dtype=np.float64),
        t=np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not contiguous
    )
    back = to_numpy(from_numpy(weights))
    assert list(back) == ["z", "a", "t"]
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype


def test_to_state_dict_loads_into_the_model() -> None:
    source, target = TabularMLP(in_features=3, num_classes=2), TabularMLP(in_features=3, num_classes=2)
    target.load_state_dict(to_state_dict(ArrayRecord(source.state_dict())))
    for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.fixture
def reference() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(w=np.zeros((2, 3), dtype=np.float32), b=np.zeros(3, dtype=np.float32))


def test_a_matching_update_passes(reference: OrderedDict[str, np.ndarray]) -> None:
    check_update(OrderedDict(w=np.ones((2, 3), np.float32), b=np.ones(3, np.float32)), reference=reference)


def test_a_missing_tensor_is_named(reference: OrderedDict[str, np.ndarray]) -> None:
    with pytest.raises(InvalidUpdate, match=r"missing \['b'\], unexpected \[\]"):
        check_update(OrderedDict(w=reference["w"]), reference=reference)


def test_an_unexpected_tensor_is_named(reference: OrderedDict[str, np.ndarray]) -> None:
    with pytest.raises(InvalidUpdate, match=r"missing \[\], unexpected \['c'\]"):
        check_update(OrderedDict(**reference, c=np.zeros(1, np.float32)), reference=reference)


@pytest.mark.parametrize(
    "bad_w,expected",
    [
        pytest.param(np.zeros((3, 2), np.float32), r"tensor 'w' has shape \(3, 2\), expected \(2, 3\)", id="shape"),
        pytest.param(np.zeros((2, 3), np.int64), r"tensor 'w' has dtype int64, expected float32", id="integer"),
        pytest.param(np.zeros((2, 3), np.float64), r"tensor 'w' has dtype float64, expected float32", id="float64"),
        pytest.param(np.full((2, 3), np.nan, np.float32), r"tensor 'w' contains NaN or infinite values", id="nan"),
        pytest.param(
            np.array([[0, 0, np.inf]] * 2, np.float32), r"tensor 'w' contains NaN or infinite values", id="inf"
        ),
    ],
)
def test_a_bad_tensor_is_named(reference: OrderedDict[str, np.ndarray], bad_w: np.ndarray, expected: str) -> None:
    with pytest.raises(InvalidUpdate, match=expected):
        check_update(OrderedDict(w=bad_w, b=reference["b"]), reference=reference)


def test_a_nan_in_a_later_tensor_names_that_tensor(reference: OrderedDict[str, np.ndarray]) -> None:
    bad_b = np.array([0.0, np.nan, 0.0], np.float32)
    with pytest.raises(InvalidUpdate, match=r"tensor 'b' contains NaN"):
        check_update(OrderedDict(w=reference["w"], b=bad_b), reference=reference)
