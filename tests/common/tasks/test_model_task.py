"""The task interface's model side: importing a task by name, pinning its version and architecture, refusing others."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from common.models import build_model
from common.schema import TABULAR_TASK, DatasetSchema, FeatureSpec
from common.tasks.model_task import TaskError, architecture_hash, build_task_model, installed_version, pin_task
from tests.support.task_packages import BATCHNORM_TASK, MakeTask, task_schema


def _tabular() -> DatasetSchema:
    return DatasetSchema(label="y", num_classes=3, features=[FeatureSpec(name=f"f{i}") for i in range(5)])


def test_a_schema_without_a_task_is_the_built_in_tabular_one_with_the_same_initial_model() -> None:
    schema = _tabular()
    assert schema.task_module == TABULAR_TASK
    before = build_model(schema, seed=42)  # how the server built its initial model before tasks existed
    pinned, model = pin_task(schema, seed=42)
    assert type(model) is type(before)
    for (name, a), b in zip(before.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert pinned.task_version == "1" and pinned.model_hash == architecture_hash(model)
    assert build_task_model(pinned) is not None  # a hospital with the same fedcare accepts the pin


def test_a_hospital_with_another_task_version_refuses_naming_both(make_task: MakeTask) -> None:
    name = make_task("xray_task", BATCHNORM_TASK)
    pinned, _ = pin_task(task_schema(name), seed=1)
    assert pinned.task_version == "2.1.0"
    with pytest.raises(TaskError, match=r"xray_task version 2\.1\.0 is installed here, but this run pins version 2\.2"):
        build_task_model(pinned.model_copy(update={"task_version": "2.2"}))


def test_a_hospital_whose_model_differs_refuses_naming_the_hashes(make_task: MakeTask) -> None:
    name = make_task("xray_task", BATCHNORM_TASK)
    pinned, _ = pin_task(task_schema(name), seed=1)
    other = pinned.model_copy(update={"options": {"inputs": 5}})  # a site whose task builds other shapes
    with pytest.raises(
        TaskError,
        match=f"builds a model with architecture hash [0-9a-f]{{16}} here, but this run pins {pinned.model_hash}",
    ):
        build_task_model(other)


def test_the_hash_changes_with_a_layer_setting_not_only_with_shapes() -> None:
    a = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    b = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    c = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert architecture_hash(a) != architecture_hash(b)
    assert architecture_hash(a) == architecture_hash(c)  # weights do not matter, the architecture does


def test_the_server_imports_only_the_model_factory_never_the_data_module(make_task: MakeTask) -> None:
    name = make_task("xray_task", BATCHNORM_TASK, data_code="raise RuntimeError('hospital data code ran')\n")
    pin_task(task_schema(name), seed=1)
    assert name in sys.modules and f"{name}.data" not in sys.modules


def test_a_task_that_is_not_installed_says_what_to_install() -> None:
    with pytest.raises(TaskError, match="task module 'no_such_task' is not installed here: install the federation"):
        build_task_model(task_schema("no_such_task"))


def test_a_task_that_fails_to_import_or_lacks_the_factory_is_named(make_task: MakeTask) -> None:
    broken = make_task("broken_task", "import no_such_dependency\n")
    with pytest.raises(TaskError, match="task module 'broken_task' failed to import: No module named"):
        build_task_model(task_schema(broken))
    empty = make_task("empty_task", "__version__ = '1'\n")
    with pytest.raises(TaskError, match=r"'empty_task' has no build_model\(schema\) function"):
        build_task_model(task_schema(empty))


def test_a_task_without_a_version_cannot_be_pinned(make_task: MakeTask) -> None:
    name = make_task("unversioned_task", "from torch import nn\ndef build_model(schema):\n    return nn.Linear(4, 3)\n")
    with pytest.raises(TaskError, match="declares no __version__"):
        installed_version(sys.modules.get(name) or __import__(name))


def test_a_factory_that_returns_no_module_is_refused(make_task: MakeTask) -> None:
    name = make_task("odd_task", "__version__ = '1'\ndef build_model(schema):\n    return 'a model'\n")
    with pytest.raises(TaskError, match="build_model returned str, not a torch.nn.Module"):
        build_task_model(task_schema(name))
