"""Opacus' ModuleValidator before training: fixable layers replaced (and logged) alike everywhere, others refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from client.dp_training import train_private
from common.data import HospitalData
from common.tasks.dp_compat import DPIncompatibleModel, make_dp_compatible
from common.tasks.model_task import TaskError, architecture_hash, build_task_model, pin_task
from tests.support.task_packages import BATCHNORM_TASK, MakeTask, task_schema


def test_batchnorm_is_replaced_by_groupnorm_and_the_log_names_the_layer(
    make_task: MakeTask, caplog: pytest.LogCaptureFixture
) -> None:
    name = make_task("xray_task", BATCHNORM_TASK)
    with caplog.at_level(logging.WARNING, logger="flwr.fedcare.task"):
        server_schema, server_model = pin_task(task_schema(name), seed=3)
    assert isinstance(server_model[1], nn.GroupNorm) and ModuleValidator.validate(server_model) == []
    assert (
        "task xray_task: layer '1' (BatchNorm1d) cannot be trained with DP-SGD; replaced by GroupNorm(" in caplog.text
    )
    hospital_model = build_task_model(server_schema)  # a hospital: the same fix, so the pinned hash matches
    assert architecture_hash(hospital_model) == server_schema.model_hash
    hospital_model.load_state_dict(server_model.state_dict())  # the global weights fit


def test_the_fixed_model_trains_under_real_dp_sgd(make_task: MakeTask) -> None:
    model = build_task_model(task_schema(make_task("xray_task", BATCHNORM_TASK)), seed=0)
    rng = np.random.default_rng(0)
    data = HospitalData(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40).astype(np.int64))
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_private(
        model,
        data,
        batch_size=8,
        epochs=1,
        learning_rate=0.01,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="off",
        device=torch.device("cpu"),
        seed=0,
    )
    assert outcome.steps >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class RunningNorm(nn.Module):
    """A layer with a weight and running statistics: DP-SGD cannot train it and Opacus has no fix."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.register_buffer("running_mean", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean) * self.weight


def test_a_layer_opacus_cannot_fix_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(RunningNorm(8)), nn.Linear(8, 3))
    with pytest.raises(DPIncompatibleModel) as info:
        make_dp_compatible(model, task="xray_task")
    message = str(info.value)
    assert "task xray_task: the model cannot be trained with DP-SGD and Opacus cannot fix it" in message
    assert "layer '1.0' (RunningNorm): a trainable layer that keeps buffers (running_mean)" in message


UNFIXABLE_TASK = """
    import torch
    from torch import nn

    __version__ = "1"


    class RunningNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))
            self.register_buffer("running_mean", torch.zeros(4))

        def forward(self, x):
            return (x - self.running_mean) * self.weight


    def build_model(schema):
        return nn.Sequential(RunningNorm(), nn.Linear(4, schema.num_classes))
"""


def test_every_site_refuses_an_unfixable_task_model_with_the_layer_named(make_task: MakeTask) -> None:
    with pytest.raises(TaskError, match=r"layer '0' \(RunningNorm\)"):
        build_task_model(task_schema(make_task("bad_task", UNFIXABLE_TASK)))


def test_a_compatible_model_is_returned_as_it_is() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8))
    assert make_dp_compatible(model, task="t") is model
