"""A federation's task, model side: import it by name, build its DP-compatible model, pin and check it.

The ServerApp and the hospitals both come here; neither imports the task's `data` submodule from
here, so the coordinator never runs hospital data code. The ServerApp pins the task's installed
version and its model's architecture hash into the run's schema (which every round config carries);
a hospital whose installed task differs refuses the round instead of training something else.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from types import ModuleType

import torch
from torch import nn

from common.schema import DatasetSchema
from common.tasks.dp_compat import DPIncompatibleModel, make_dp_compatible


class TaskError(ValueError):
    """A task that is not installed here, does not follow the interface, or is not the run's pinned one."""


def _not_installed(name: str, exc: ModuleNotFoundError) -> bool:
    return bool(exc.name) and (name == exc.name or name.startswith(f"{exc.name}."))


def import_module_of_task(name: str, *, what: str = "task module") -> ModuleType:
    """The module `name`; an error says whether it is missing or broken."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _not_installed(name, exc):
            raise TaskError(
                f"{what} {name!r} is not installed here: install the federation's task package at this site "
                "(pip install <the consortium's package>==<the pinned version>; docs/tasks.md)"
            ) from exc
        raise TaskError(f"{what} {name!r} failed to import: {exc}") from exc
    except Exception as exc:  # the task's own code failed while importing
        raise TaskError(f"{what} {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def import_task(name: str) -> ModuleType:
    """The task's top-level module, checked for the interface's model factory."""
    module = import_module_of_task(name)
    if not callable(getattr(module, "build_model", None)):
        raise TaskError(f"task module {name!r} has no build_model(schema) function (docs/tasks.md)")
    return module


def installed_version(module: ModuleType) -> str:
    """The task's `__version__`, else the version of the installed distribution that provides it."""
    version = getattr(module, "__version__", None)
    if isinstance(version, str) and version:
        return version
    top = module.__name__.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        return importlib.metadata.version(dist)
    raise TaskError(
        f"task module {module.__name__!r} declares no __version__ and no installed distribution provides it; "
        "set __version__ in it so every site can prove it runs the same task"
    )


def architecture_hash(model: nn.Module) -> str:
    """A digest of the layers (types and settings) and of every tensor's name, shape and dtype: equal
    exactly when two sites' models can exchange weights and compute the same function of them."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"\n{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return digest.hexdigest()[:16]


def build_task_model(schema: DatasetSchema, *, seed: int | None = None) -> nn.Module:
    """The schema's task model, DP-compatible, checked against the version and hash the schema pins
    (an unpinned schema checks nothing). A seed makes the initial global model reproducible."""
    name = schema.task_module
    module = import_task(name)
    version = installed_version(module)
    if schema.task_version and version != schema.task_version:
        raise TaskError(
            f"task {name} version {version} is installed here, but this run pins version {schema.task_version}: "
            f"install {schema.task_version} (every site must train the same task)"
        )
    if seed is not None:
        torch.manual_seed(seed)
    model = module.build_model(schema)
    if not isinstance(model, nn.Module):
        raise TaskError(f"task {name}: build_model returned {type(model).__name__}, not a torch.nn.Module")
    try:
        model = make_dp_compatible(model, task=name)
    except DPIncompatibleModel as exc:
        raise TaskError(str(exc)) from exc
    digest = architecture_hash(model)
    if schema.model_hash and digest != schema.model_hash:
        raise TaskError(
            f"task {name} {version} builds a model with architecture hash {digest} here, but this run pins "
            f"{schema.model_hash}: this site's task code or its dependencies (torch, opacus) differ from the "
            "coordinator's; install the same versions"
        )
    return model


def pin_task(schema: DatasetSchema, *, seed: int | None) -> tuple[DatasetSchema, nn.Module]:
    """The ServerApp's side: the initial model, and the schema with this task's version and hash filled in
    (refused if the schema file pinned other ones), for every hospital to match."""
    model = build_task_model(schema, seed=seed)
    version = installed_version(import_task(schema.task_module))
    pinned = schema.model_copy(update={"task_version": version, "model_hash": architecture_hash(model)})
    return pinned, model
