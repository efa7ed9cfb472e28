"""Plain local training and scoring on one hospital's data, and the choice of device.

DP-SGD is `client.dp_training`; both report a `TrainingOutcome`, so the round treats them alike.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.mixed_precision import DPConfigError, autocast, resolve_amp
from common.data import HospitalData


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float
    examples: int


@dataclass(frozen=True)
class TrainingOutcome:
    loss: float  # mean training loss over the batches that had rows
    steps: int  # optimizer steps taken; with DP, each one added noise and was counted by the accountant
    skipped_steps: int  # fp16 steps dropped for non-finite values: no noise, no update, nothing released
    sample_rate: float | None  # the rate Opacus' accountant used; None without DP
    noise_multiplier: float | None
    amp: str  # resolved: off, bf16 or fp16
    grad_sample_mode: str | None  # resolved; None without DP


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_loader(data: HospitalData, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def check_training_inputs(*, batch_size: int, epochs: int, learning_rate: float, data: HospitalData) -> None:
    """Refuse settings or data no training can use, before a model or the ledger is touched."""
    if batch_size < 1 or epochs < 1:
        raise DPConfigError(f"batch-size = {batch_size}, local-epochs = {epochs}: both must be at least 1")
    if not learning_rate > 0:
        raise DPConfigError(f"learning-rate = {learning_rate}: must be > 0")
    if len(data) == 0:
        raise DPConfigError("no training rows: this hospital's training split is empty")


def epochs_of(loader: DataLoader, epochs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in range(epochs):
        yield from loader


def capped(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], max_steps: int | None) -> Iterator[Any]:
    """The first `max_steps` batches (all of them when None): the server's schedule for this round."""
    return batches if max_steps is None else itertools.islice(batches, max_steps)


def mean_loss(losses: list[float]) -> float:
    return float(np.mean(losses)) if losses else float("nan")


def train_plain(
    model: nn.Module,
    data: HospitalData,
    *,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    amp: str = "auto",
    device: torch.device,
    seed: int,
    criterion: nn.Module | None = None,
    max_steps: int | None = None,
    after_step: Callable[[float], bool] | None = None,
) -> TrainingOutcome:
    """Non-DP training with the same optimizer and precision handling, for comparison and dp = false runs.

    Without DP, ``GradScaler`` is used as torch intends (``scaler.step`` skips a
    non-finite step itself); a skip shows as the scale going down.
    """
    check_training_inputs(batch_size=batch_size, epochs=epochs, learning_rate=learning_rate, data=data)
    resolved_amp = resolve_amp(amp, device=device)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    criterion = criterion or nn.CrossEntropyLoss()  # the task's loss (client.task_data.task_loss), if it has one
    scaler = torch.amp.GradScaler(device.type) if resolved_amp == "fp16" else None
    losses: list[float] = []
    steps = skipped = 0
    batches = epochs_of(make_loader(data, batch_size=batch_size, shuffle=True, seed=seed), epochs)
    step_started = time.monotonic()
    for x, y in capped(batches, max_steps):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(resolved_amp, device.type):
            loss = criterion(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
            steps += 1
        else:
            scale_before = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            went_down = scaler.get_scale() < scale_before
            steps, skipped = steps + (not went_down), skipped + went_down
        losses.append(float(loss.detach()))
        if after_step is not None and not after_step(time.monotonic() - step_started):
            break
        step_started = time.monotonic()
    return TrainingOutcome(
        loss=mean_loss(losses),
        steps=steps,
        skipped_steps=skipped,
        sample_rate=None,
        noise_multiplier=None,
        amp=resolved_amp,
        grad_sample_mode=None,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: HospitalData,
    *,
    device: torch.device,
    batch_size: int = 512,
    criterion: nn.Module | None = None,
) -> Score:
    """Mean loss and accuracy; `criterion` is the task's loss summing over a batch (client.task_data.summed)."""
    model.eval()
    criterion = criterion or nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for x, y in make_loader(data, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(criterion(logits, y))
        correct += int((logits.argmax(dim=1) == y).sum())
    n = len(data)
    return Score(loss=total_loss / n, accuracy=correct / n, examples=n)
