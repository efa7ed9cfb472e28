"""Model, data and the train/test loops, as quickstart-pytorch's task.py lays them out.

Only the model and the table loader come from fedcare, so that both apps do the
same local work and the benchmark measures orchestration, not preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.data import HospitalData, load_hospital_table, split_train_validation
from common.models import TabularMLP
from common.schema import DatasetSchema, load_schema


def load_model(schema_path: str) -> tuple[nn.Module, DatasetSchema]:
    schema = load_schema(Path(schema_path))
    return TabularMLP(in_features=len(schema.features), num_classes=schema.num_classes), schema


def _loader(data: HospitalData, batch_size: int, shuffle: bool) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def load_data(
    data_path: str, schema: DatasetSchema, *, batch_size: int, validation_fraction: float, seed: int
) -> tuple[DataLoader, DataLoader]:
    """This hospital's rows, split into a train and a validation loader."""
    data = load_hospital_table(data_path, schema)
    train, validation = split_train_validation(data, validation_fraction=validation_fraction, seed=seed)
    return _loader(train, batch_size, shuffle=True), _loader(validation, batch_size, shuffle=False)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, device: torch.device) -> float:
    """Local training; returns the mean loss over all batches."""
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    running_loss, batches = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            batches += 1
    return running_loss / max(batches, 1)


@torch.no_grad()
def test(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy on `loader`."""
    model.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += criterion(logits, y).item()
        correct += (logits.argmax(1) == y).sum().item()
    n = len(loader.dataset)
    return loss / n, correct / n
