"""Local DP-SGD with Opacus: choosing the grad-sample mode, planning the ledger, one DP step, the loop.

Two Opacus 1.6 facts shape this file:

* fp16 needs the loss scale taken out of per-sample gradients before clipping
  (``client.mixed_precision.PerSampleLossScaler``, applied in ``dp_step``).
* The ledger is written before training, so ``plan_round`` reproduces the
  sample rate and step count that ``make_private`` will use, to the bit.

Randomness that protects privacy (Poisson sampling, the Gaussian noise) is drawn
from fresh OS entropy, never from the run's seed: that seed arrives in the
server's config, and noise the server can regenerate is no noise.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.mixed_precision import DPConfigError, PerSampleLossScaler, ResolvedAmp, autocast, resolve_amp
from client.training import TrainingOutcome, capped, check_training_inputs, epochs_of, mean_loss
from common.data import HospitalData
from common.settings import GradSampleMode

log = logging.getLogger("flwr.fedcare.client")

GRAD_SAMPLE_MODES: tuple[str, ...] = get_args(GradSampleMode)
# Fastest correct mode per precision, measured by bench/dp_overhead.py (see docs/benchmarks.md).
AUTO_GRAD_SAMPLE_MODE: dict[str, str] = {"off": "ghost", "bf16": "ghost", "fp16": "hooks"}


# ---------------------------------------------------------------- choosing the mode


def resolve_grad_sample_mode(mode: str, *, amp: ResolvedAmp) -> str:
    """The Opacus grad-sample mode for a precision; ``auto`` takes the fastest that is correct.

    Refused combinations, and why:

    * ``ew`` with any autocast: expanded weights multiply an fp32 weight by a
      low-precision activation and fail ("expected m1 and m2 to have the same dtype").
    * ``ghost`` with fp16: ghost clipping never materialises per-sample gradients,
      so the loss scale cannot be taken out of them before clipping.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise DPConfigError(f"grad-sample-mode = {mode!r} is unknown; choose one of {', '.join(GRAD_SAMPLE_MODES)}")
    if mode == "auto":
        return AUTO_GRAD_SAMPLE_MODE[amp]
    if mode == "ew" and amp != "off":
        raise DPConfigError(
            f'grad-sample-mode = "ew" fails under {amp} autocast in Opacus 1.6; '
            'set amp = "off" to keep ew, or use grad-sample-mode = "ghost" or "hooks" with bf16'
        )
    if mode == "ghost" and amp == "fp16":
        raise DPConfigError(
            'grad-sample-mode = "ghost" cannot be used with amp = "fp16": ghost clipping has no per-sample '
            "gradients to remove the fp16 loss scale from, so clipping would be wrong; "
            'use amp = "bf16" with ghost, or grad-sample-mode = "hooks" with fp16'
        )
    return mode


def plan_round(*, num_examples: int, batch_size: int, epochs: int, max_steps: int | None = None) -> tuple[float, int]:
    """(sample_rate, steps) exactly as ``make_private`` with Poisson sampling will take them.

    ``max_steps``: the server's schedule for this round (``round-deadline``); the loop stops after that
    many Poisson batches, so the steps recorded are the steps taken. The rate stays the epoch's.

    Opacus samples each row with probability 1/k (k = ceil(n / batch)), makes
    ``int(1 / (1/k))`` batches per epoch, and tells the accountant the rate
    ``1 / batches``. Floating point makes ``int(1/(1/k))`` equal k - 1 for some k
    (93, 99, 105, ...), so the naive ``(1/k, epochs * k)`` would be wrong there.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size), ("epochs", epochs)):
        if value < 1:
            raise DPConfigError(f"{name} = {value}: must be at least 1")
    batches = math.ceil(num_examples / batch_size)
    per_epoch = int(1 / (1 / batches))  # UniformWithReplacementSampler's len()
    if max_steps is not None and max_steps < 1:
        raise DPConfigError(f"max_steps = {max_steps}: must be at least 1")
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    return 1 / per_epoch, steps


def resolve_distributed_mode(mode: str, *, amp: ResolvedAmp) -> str:
    """The grad-sample mode for ``local-workers > 1``: ``auto`` (ghost) becomes hooks.

    Refused: ghost, whose distributed optimizer relies on torch DDP's backward all-reduce, which an empty
    Poisson share (no backward on that rank) would leave hanging; fp16, whose skipped non-finite batch on one
    rank would leave the others waiting in the all-reduce.
    """
    if amp == "fp16":
        raise DPConfigError('local-workers > 1 cannot use amp = "fp16"; use amp = "bf16" or "off"')
    if mode == "ghost":
        raise DPConfigError(
            'local-workers > 1 cannot use grad-sample-mode = "ghost"; use "hooks" (what "auto" picks then)'
        )
    return "hooks" if mode == "auto" else resolve_grad_sample_mode(mode, amp=amp)


# ---------------------------------------------------------------- one DP step


@dataclass(frozen=True)
class StepResult:
    loss: float | None  # None for an empty Poisson batch
    applied: bool  # noise added, weights updated, step counted by the accountant


def _trainable(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def dp_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], Any],  # ghost: the criterion make_private returned
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    amp: ResolvedAmp,
    loss_scaler: PerSampleLossScaler | None = None,
    ghost: bool = False,
) -> StepResult:
    """One DP-SGD step on one Poisson batch, from objects ``make_private`` returned.

    An empty batch still takes a (pure-noise) step, as the accountant assumes;
    its zero-row per-sample gradients are set here because ``ew`` crashes on a
    zero-row forward. With fp16 the per-sample gradients are unscaled before
    clipping; a non-finite batch is dropped whole (no noise, no update, not
    counted) and the scale is lowered.
    """
    params = _trainable(optimizer)
    optimizer.zero_grad(set_to_none=True)
    if len(labels) == 0:
        for p in params:
            if ghost:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        optimizer.step()
        return StepResult(loss=None, applied=True)

    if amp == "fp16" and (loss_scaler is None or ghost):
        raise DPConfigError('amp = "fp16" needs per-sample gradients and a PerSampleLossScaler to unscale them')
    with autocast(amp, features.device.type):
        loss = criterion(module(features), labels)
    loss_value = float(loss.detach())
    with warnings.catch_warnings():
        # Benign torch note: Opacus' full backward hook fires on a first layer whose input needs no grad.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        applied = _backward_and_step(loss, optimizer, params, loss_scaler)
    return StepResult(loss=loss_value, applied=applied)


def _backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    loss_scaler: PerSampleLossScaler | None,
) -> bool:
    if loss_scaler is not None:
        loss_scaler.scale(loss).backward()
        finite = loss_scaler.unscale_per_sample(params)
        loss_scaler.update(finite=finite)
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            return False
    else:
        loss.backward()
    optimizer.step()
    return True


# ---------------------------------------------------------------- training loops


_prng_warned = False


def _warn_standard_prng_once() -> None:
    global _prng_warned
    if not _prng_warned:
        _prng_warned = True
        log.warning(
            "DP noise and Poisson sampling come from torch's standard PRNG seeded from OS entropy, not a CSPRNG: "
            "Opacus' secure_mode needs torchcsprng, which does not install for torch 2.13"
        )


def _entropy_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def train_private(
    model: nn.Module,
    data: HospitalData,
    *,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "auto",
    amp: str = "auto",
    device: torch.device,
    seed: int,
    criterion: nn.Module | None = None,
    distributed: bool = False,
    max_steps: int | None = None,
    after_step: Callable[[float], bool] | None = None,
) -> TrainingOutcome:
    """DP-SGD with Adam through a fresh Opacus ``PrivacyEngine``, training ``model`` in place.

    The caller keeps the privacy ledger and records ``plan_round`` before calling,
    so the engine's own accountant is only read back to report what was done.
    ``seed`` is deliberately not used: it comes from the server's config, and the
    sampling and noise must be secret from the server. Opacus' hooks are removed
    on return, so the same module can be trained again. ``distributed``: this
    process is one rank of a process group (``client.ddp_workers``); the model is
    wrapped in ``DPDDP`` and the batches are each rank's share of one Poisson sample.
    ``max_steps``: stop after that many Poisson batches (``plan_round`` records the same number);
    ``after_step``: called after each one with its seconds; False stops the loop (client.step_clock).
    """
    from opacus import PrivacyEngine  # heavy; evaluate-only processes never import it
    from opacus.validators.errors import UnsupportedModuleError

    del seed
    check_training_inputs(batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, data=data)
    if noise_multiplier < 0 or not max_grad_norm > 0:
        raise DPConfigError(
            f"noise-multiplier = {noise_multiplier}, max-grad-norm = {max_grad_norm}: need noise >= 0 and a norm > 0"
        )
    resolved_amp = resolve_amp(amp, device=device)
    resolve = resolve_distributed_mode if distributed else resolve_grad_sample_mode
    mode = resolve(grad_sample_mode, amp=resolved_amp)
    _warn_standard_prng_once()
    loss = criterion or nn.CrossEntropyLoss()  # the task's loss (client.task_data.task_loss), if it has one

    model.to(device).train()
    dataset = TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels))
    loader = DataLoader(dataset, batch_size=batch_size, generator=_entropy_generator(torch.device("cpu")))
    module: nn.Module = model
    if distributed:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        from client.ddp_sampling import distributed_poisson_loader

        module = DPDDP(model)  # broadcasts rank 0's weights, so every rank starts (and stays) equal
        loader = distributed_poisson_loader(
            dataset, batch_size=batch_size, generator=_entropy_generator(torch.device("cpu"))
        )
    with warnings.catch_warnings():
        # Opacus' "Secure RNG turned off" warning: said once, with the reason, by the log line above.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        engine = PrivacyEngine(accountant="rdp")
        try:
            private = engine.make_private(
                module=module,
                optimizer=torch.optim.Adam(model.parameters(), lr=learning_rate),
                criterion=loss,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                grad_sample_mode=mode,
                noise_generator=_entropy_generator(device),
                poisson_sampling=not distributed,  # distributed: the loader above samples already
            )
        except UnsupportedModuleError as exc:
            raise DPConfigError(f"the model cannot be trained with DP-SGD: {exc}") from exc
    if mode == "ghost":
        dp_module, optimizer, criterion, dp_loader = private
    else:
        dp_module, optimizer, dp_loader = private
        criterion = loss
    scaler = PerSampleLossScaler(device.type) if resolved_amp == "fp16" else None

    losses: list[float] = []
    steps = skipped = 0
    try:
        step_started = time.monotonic()
        for x, y in capped(epochs_of(dp_loader, epochs), max_steps):
            result = dp_step(
                dp_module,
                optimizer,
                criterion,
                x.to(device),
                y.to(device),
                amp=resolved_amp,
                loss_scaler=scaler,
                ghost=mode == "ghost",
            )
            steps, skipped = steps + result.applied, skipped + (not result.applied)
            if result.loss is not None and math.isfinite(result.loss):
                losses.append(result.loss)
            if after_step is not None and not after_step(time.monotonic() - step_started):
                break
            step_started = time.monotonic()
    finally:
        dp_module.cleanup()  # removes hooks and grad_sample attributes from the caller's module

    history = engine.accountant.history
    counted = sum(s for _, _, s in history)
    if counted != steps:  # would mean the ledger and Opacus disagree about what was released
        raise RuntimeError(f"Opacus' accountant counted {counted} steps but {steps} were taken")
    return TrainingOutcome(
        loss=mean_loss(losses),
        steps=steps,
        skipped_steps=skipped,
        sample_rate=history[0][1] if history else 1 / len(dp_loader),
        noise_multiplier=noise_multiplier,
        amp=resolved_amp,
        grad_sample_mode=mode,
    )
