"""A hospital's side of its task: reading its local data and the task's loss.

Only hospitals (and the demo, scoring held-out data as a hospital would) import a task's `data`
submodule; the ServerApp builds models through `common.tasks.model_task` alone.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from common.data import HospitalData
from common.schema import DatasetSchema
from common.tasks import DATA_SUBMODULE
from common.tasks.model_task import TaskError, import_module_of_task, import_task


def load_task_data(path: Path | str, schema: DatasetSchema) -> HospitalData:
    """This hospital's data as the task reads it; the task's own errors (SchemaError) name the file."""
    name = f"{schema.task_module}.{DATA_SUBMODULE}"
    import_task(schema.task_module)
    load = getattr(import_module_of_task(name, what="task data module"), "load_data", None)
    if not callable(load):
        raise TaskError(f"task data module {name!r} has no load_data(path, schema) function (docs/tasks.md)")
    data = load(Path(path), schema)
    if not isinstance(data, HospitalData):
        raise TaskError(f"{name}.load_data returned {type(data).__name__}, not a common.data.HospitalData")
    return data


def task_loss(schema: DatasetSchema) -> nn.Module | None:
    """The task's training loss (mean over a batch), or None for fedcare's cross-entropy."""
    make_loss = getattr(import_task(schema.task_module), "make_loss", None)
    if make_loss is None:
        return None
    loss = make_loss()
    if not isinstance(loss, nn.Module) or getattr(loss, "reduction", None) != "mean":
        raise TaskError(
            f"task {schema.task_module}: make_loss() must return a torch loss module with reduction='mean' "
            "(Opacus' ghost clipping and fedcare's scoring set the reduction themselves)"
        )
    return loss


def summed(loss: nn.Module) -> nn.Module:
    """A copy of `loss` that sums over the batch, for scoring whole data sets."""
    total = copy.deepcopy(loss)
    total.reduction = "sum"
    return total
