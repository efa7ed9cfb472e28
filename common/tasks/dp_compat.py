"""Making a task's model trainable with DP-SGD, the same way at every site (Opacus' ModuleValidator).

What Opacus can fix (BatchNorm to GroupNorm, InstanceNorm's running statistics, LSTM, GRU and
multi-head attention to their DP versions) is fixed and logged with the layer's name. What it cannot
(a trainable layer that also keeps buffers, whose statistics would leak samples past the clipping) is
refused with the layer named. The fix depends only on the architecture, so the ServerApp and every
hospital end with identical models; the architecture hash pinned per run checks it.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger("flwr.fedcare.task")


class DPIncompatibleModel(ValueError):
    """A task's model has a layer DP-SGD cannot train and Opacus cannot replace."""


def _problems(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(layer name, layer, reason) for each layer Opacus would refuse, as `make_private` would find them."""
    # Opacus is heavy (seconds); the warm executors pre-import it, other processes pay once here.
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    found = []
    for name, layer in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(layer))
        for error in validator(layer) if validator else []:
            found.append((name, layer, str(error).split(". ")[0]))
        if any(True for _ in layer.buffers()):  # GradSampleModule.validate's rule: buffers are not private
            buffers = ", ".join(n for n, _ in layer.named_buffers())
            found.append((name, layer, f"a trainable layer that keeps buffers ({buffers}), which DP-SGD cannot clip"))
    return found


def _describe(problems: list[tuple[str, nn.Module, str]]) -> str:
    return "; ".join(f"layer {name!r} ({type(layer).__name__}): {reason}" for name, layer, reason in problems)


def make_dp_compatible(model: nn.Module, *, task: str) -> nn.Module:
    """`model` itself when DP-SGD can train it, else Opacus' fixed copy; raises `DPIncompatibleModel` naming
    each layer that cannot be fixed."""
    from opacus.validators import ModuleValidator

    model.train()
    problems = _problems(model)
    if not problems:
        return model
    fixable = {name: layer for name, layer, _ in problems if type(layer) in ModuleValidator.FIXERS}
    if fixable:
        try:
            model = ModuleValidator.fix(model)
        except Exception as exc:  # a fixer that cannot build the replacement (e.g. channels GroupNorm cannot split)
            raise DPIncompatibleModel(
                f"task {task}: Opacus could not replace {_describe(problems)}: {type(exc).__name__}: {exc}"
            ) from exc
        for name, layer in fixable.items():
            log.warning(
                "task %s: layer %r (%s) cannot be trained with DP-SGD; replaced by %s (Opacus ModuleValidator.fix), "
                "as at every site, so the architecture stays identical",
                task,
                name,
                type(layer).__name__,
                repr(model.get_submodule(name)),
            )
    remaining = _problems(model)
    if remaining:
        raise DPIncompatibleModel(
            f"task {task}: the model cannot be trained with DP-SGD and Opacus cannot fix it: {_describe(remaining)}; "
            "change the task's model (e.g. GroupNorm instead of a layer with running statistics)"
        )
    return model
