"""A hospital's side of the task interface: its data through the task's loader, the task's loss in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from client.task_data import load_task_data, summed, task_loss
from client.training import evaluate, train_plain
from common.data import HospitalData
from common.schema import DatasetSchema, FeatureSpec, SchemaError
from common.tasks.model_task import TaskError
from tests.support.task_packages import BATCHNORM_TASK, MakeTask, task_schema

DATA = """
    import numpy as np

    from common.data import HospitalData


    def load_data(path, schema):
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
        return HospitalData(rows[:, :-1].astype(np.float32), rows[:, -1].astype(np.int64))
"""
SMOOTHED = (
    BATCHNORM_TASK
    + """

    def make_loss():
        return nn.CrossEntropyLoss(label_smoothing=0.1)
"""
)


def test_the_built_in_tabular_task_reads_the_table_as_before(tmp_path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("a,y\n1,0\n3,1\n")
    schema = DatasetSchema(label="y", num_classes=2, features=[FeatureSpec(name="a", center=2.0)])
    data = load_task_data(path, schema)
    assert data.features.tolist() == [[-1.0], [1.0]] and data.labels.tolist() == [0, 1]
    with pytest.raises(SchemaError, match="data file not found"):
        load_task_data(tmp_path / "missing.csv", schema)


def test_a_custom_task_reads_its_own_files(make_task: MakeTask, tmp_path) -> None:
    name = make_task("xray_task", BATCHNORM_TASK, data_code=DATA)
    (tmp_path / "rows.csv").write_text("0.5,1,2,3,2\n0,0,0,0,1\n")
    data = load_task_data(tmp_path / "rows.csv", task_schema(name))
    assert data.features.shape == (2, 4) and data.labels.tolist() == [2, 1]


def test_a_custom_task_without_data_module_or_with_a_wrong_result_is_refused(make_task: MakeTask, tmp_path) -> None:
    without = make_task("model_only_task", BATCHNORM_TASK)
    with pytest.raises(TaskError, match="task data module 'model_only_task.data' is not installed here"):
        load_task_data(tmp_path, task_schema(without))
    wrong = make_task("wrong_task", BATCHNORM_TASK, data_code="def load_data(path, schema):\n    return [1, 2]\n")
    with pytest.raises(TaskError, match="wrong_task.data.load_data returned list, not a common.data.HospitalData"):
        load_task_data(tmp_path, task_schema(wrong))


def test_the_task_loss_is_used_for_training_and_scoring(make_task: MakeTask) -> None:
    schema = task_schema(make_task("smooth_task", SMOOTHED))
    loss = task_loss(schema)
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    model = nn.Linear(4, 3)
    data = HospitalData(np.eye(4, dtype=np.float32)[[0, 1, 2]], np.array([0, 1, 2]))
    train_plain(
        model, data, batch_size=3, epochs=30, learning_rate=0.1, device=torch.device("cpu"), seed=0, criterion=loss
    )
    smoothed = evaluate(model, data, device=torch.device("cpu"), criterion=summed(loss))
    plain = evaluate(model, data, device=torch.device("cpu"))
    assert smoothed.accuracy == plain.accuracy == 1.0
    assert smoothed.loss > plain.loss  # label smoothing never lets the loss reach plain cross-entropy's
    assert loss.reduction == "mean"  # scoring summed a copy


def test_a_loss_that_does_not_average_is_refused(make_task: MakeTask) -> None:
    code = BATCHNORM_TASK + "\n    def make_loss():\n        return nn.CrossEntropyLoss(reduction='sum')\n"
    with pytest.raises(TaskError, match="reduction='mean'"):
        task_loss(task_schema(make_task("sum_task", code)))
    assert task_loss(DatasetSchema(label="y", num_classes=2, features=[FeatureSpec(name="a")])) is None
