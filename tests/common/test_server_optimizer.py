"""Server optimizers: FedAvgM and FedAdam steps against values worked out by hand, and their state."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest

from common.server_optimizer import (
    FedAdam,
    FedAvgM,
    ServerOptimizer,
    server_optimizer_from_record,
    server_optimizer_record,
)
from common.settings import TrainingSettings


def _w(*values: float, name: str = "w") -> OrderedDict[str, np.ndarray]:
    return OrderedDict({name: np.asarray(values, dtype=np.float32)})


def test_fedavg_takes_the_average_as_it_is() -> None:
    average = _w(0.25, 3.0)
    assert ServerOptimizer().step(current=_w(1.0, 2.0), average=average)["w"] is average["w"]


def test_fedavgm_steps_match_hand_computed_momentum() -> None:
    opt = FedAvgM(learning_rate=1.0, momentum=0.9)
    # delta = [1 - 0.5, 2 - 2.5] = [0.5, -0.5]; m = delta; x = [1, 2] - m
    x1 = opt.step(current=_w(1.0, 2.0), average=_w(0.5, 2.5))
    np.testing.assert_allclose(x1["w"], [0.5, 2.5])
    # delta = [0.25, 0]; m = 0.9 * [0.5, -0.5] + delta = [0.7, -0.45]; x = [0.5 - 0.7, 2.5 + 0.45]
    x2 = opt.step(current=x1, average=_w(0.25, 2.5))
    np.testing.assert_allclose(x2["w"], [-0.2, 2.95], rtol=1e-6)
    assert x2["w"].dtype == np.float32 and opt.steps == 2


def test_fedavgm_with_learning_rate_one_and_no_momentum_is_fedavg() -> None:
    opt = FedAvgM(learning_rate=1.0, momentum=0.0)
    x = _w(1.0, -2.0)
    for average in (_w(0.5, 0.5), _w(3.0, 1.0)):
        x = opt.step(current=x, average=average)
        np.testing.assert_allclose(x["w"], average["w"])


def test_fedadam_steps_match_hand_computed_adam() -> None:
    opt = FedAdam(learning_rate=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    # delta = 0.5; m = 0.1 * 0.5 = 0.05; v = 0.01 * 0.25 = 0.0025; bias-corrected: 0.5 and 0.25
    x1 = opt.step(current=_w(1.0), average=_w(0.5))
    expected1 = 1.0 - 0.1 * 0.5 / (math.sqrt(0.25) + 1e-3)
    np.testing.assert_allclose(x1["w"], [expected1], rtol=1e-6)
    # delta = 0.2; m = 0.9 * 0.05 + 0.1 * 0.2 = 0.065; v = 0.99 * 0.0025 + 0.01 * 0.04 = 0.002875
    x2 = opt.step(current=x1, average=_w(float(x1["w"][0]) - 0.2))
    m_hat, v_hat = 0.065 / (1 - 0.9**2), 0.002875 / (1 - 0.99**2)
    expected2 = float(x1["w"][0]) - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-3)
    np.testing.assert_allclose(x2["w"], [expected2], rtol=1e-6)
    np.testing.assert_allclose(opt.buffers["m"]["w"], [0.065])
    np.testing.assert_allclose(opt.buffers["v"]["w"], [0.002875])


def test_integer_tensors_take_the_average_unstepped() -> None:
    opt = FedAvgM(learning_rate=2.0, momentum=0.5)
    current = OrderedDict(w=np.ones(2, np.float32), count=np.array([3], np.int64))
    out = opt.step(current=current, average=OrderedDict(w=np.zeros(2, np.float32), count=np.array([5], np.int64)))
    np.testing.assert_array_equal(out["count"], [5])
    np.testing.assert_allclose(out["w"], [-1.0, -1.0])  # 1 - 2 * (1 - 0)


def test_state_round_trips_and_a_restored_optimizer_continues_the_same_trajectory() -> None:
    first, resumed = FedAdam(learning_rate=0.05, momentum=0.9), FedAdam(learning_rate=0.05, momentum=0.9)
    x = _w(1.0, 2.0, 3.0)
    x = first.step(current=x, average=_w(0.9, 2.2, 2.5))
    resumed.restore(first.state(), template=x)
    a = first.step(current=x, average=_w(0.7, 2.0, 2.9))
    b = resumed.step(current=x, average=_w(0.7, 2.0, 2.9))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert resumed.steps == first.steps == 2


def test_restore_refuses_state_that_does_not_fit() -> None:
    state = FedAvgM(momentum=0.9).state()
    with pytest.raises(ValueError, match="this run uses server-optimizer 'fedadam'"):
        FedAdam().restore(state)
    opt = FedAvgM(momentum=0.9)
    opt.step(current=_w(1.0, 2.0), average=_w(0.0, 0.0))
    with pytest.raises(ValueError, match="does not fit the model"):
        FedAvgM(momentum=0.9).restore(opt.state(), template=_w(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="non-negative integer"):
        FedAvgM().restore({"optimizer": "fedavgm", "steps": -1, "buffers": {}})


def test_bad_hyperparameters_are_refused_with_the_setting_name() -> None:
    with pytest.raises(ValueError, match="server-momentum"):
        FedAvgM(momentum=1.0)
    with pytest.raises(ValueError, match="server-learning-rate"):
        FedAdam(learning_rate=0.0)


def test_settings_choose_the_optimizer_and_results_json_can_rebuild_it() -> None:
    settings = TrainingSettings.model_validate(
        {"server-optimizer": "fedadam", "server-learning-rate": 0.02, "server-momentum": 0.8, "server-beta2": 0.9}
    )
    opt = ServerOptimizer.from_settings(settings)
    assert isinstance(opt, FedAdam) and (opt.learning_rate, opt.momentum, opt.beta2) == (0.02, 0.8, 0.9)
    record = json.loads(json.dumps(server_optimizer_record(settings)))
    rebuilt = server_optimizer_from_record(record)
    assert isinstance(rebuilt, FedAdam) and (rebuilt.learning_rate, rebuilt.beta2) == (0.02, 0.9)
    assert type(server_optimizer_from_record({"server-optimizer": "fedavg"})) is ServerOptimizer
