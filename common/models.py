"""The model zoo: small networks that DP-SGD can train.

No BatchNorm anywhere: Opacus refuses it, because batch statistics mix samples
and break per-sample gradient clipping. GroupNorm is the DP-safe substitute.
"""

from __future__ import annotations

import torch
from torch import nn

from common.schema import DatasetSchema


class TabularMLP(nn.Module):
    """Two hidden layers are plenty for clinical tables of tens of features."""

    def __init__(self, *, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallImageCNN(nn.Module):
    """A CNN for 8x8 single-channel images such as scikit-learn's digits.

    Narrow (8 and 16 channels) and with no hidden dense layer, about 3.9k parameters: DP-SGD adds noise of
    the same size to every parameter while the clipped signal is shared among them, so under DP a small
    model learns faster. On the demo's non-IID digits at epsilon 3 this one reached 0.855-0.864 held-out
    accuracy where 16/32 channels with a 64-unit layer (38k parameters) reached 0.75-0.82
    (bench/utility.py, docs/benchmarks.md). Wider settings remain for data with more to learn.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv_channels: tuple[int, int] = (8, 16),
        hidden: int = 0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        c1, c2 = conv_channels
        self.input_shape = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, kernel_size=3, padding=1),
            nn.GroupNorm(4, c1),
            activation(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.GroupNorm(4, c2),
            activation(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (height // 2) * (width // 2)
        # hidden = 0: straight from the features to the classes, the fewest parameters for DP noise to cover
        head = [nn.Linear(flat, hidden), activation(), nn.Linear(hidden, num_classes)] if hidden else []
        self.head = nn.Sequential(nn.Flatten(), *(head or [nn.Linear(flat, num_classes)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.input_shape)
        return self.head(self.features(x))


def build_model(schema: DatasetSchema, *, seed: int | None = None) -> nn.Module:
    """The model the schema names; a seed makes the initial global model reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    if schema.model == "cnn":
        assert schema.input_shape is not None  # enforced by the schema validator
        c, h, w = schema.input_shape
        return SmallImageCNN(input_shape=(c, h, w), num_classes=schema.num_classes)
    return TabularMLP(in_features=len(schema.features), num_classes=schema.num_classes, hidden=schema.hidden_units)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
