"""Local training and scoring of a model on one hospital's data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.data import HospitalData


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float
    examples: int


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_loader(data: HospitalData, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
) -> float:
    """Plain local SGD; returns the mean training loss over all batches."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    losses: list[float] = []
    for _ in range(epochs):
        for x, y in loader:
            if len(y) == 0:  # Poisson sampling may draw an empty batch
                continue
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, data: HospitalData, *, device: torch.device, batch_size: int = 512) -> Score:
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for x, y in make_loader(data, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(criterion(logits, y))
        correct += int((logits.argmax(dim=1) == y).sum())
    n = len(data)
    return Score(loss=total_loss / n, accuracy=correct / n, examples=n)
