"""A consortium's task, model side: what the coordinator's ServerApp and every hospital import.

fedcare seeds torch before calling `build_model`, makes the model DP-compatible (the BatchNorm below
becomes GroupNorm at every site, and the log says so), and pins `__version__` and the model's
architecture hash into the run, so a hospital with another release of this package refuses the round.
"""

from __future__ import annotations

import torch
from torch import nn

__version__ = "0.1.0"  # keep equal to pyproject.toml's version; the run pins it


class LesionNet(nn.Module):
    """The consortium's own network: two convolution blocks and a linear head over RGB photos."""

    def __init__(self, *, num_classes: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),  # not DP-safe: fedcare replaces it with GroupNorm before training
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def build_model(schema) -> nn.Module:  # schema: common.schema.DatasetSchema
    return LesionNet(num_classes=schema.num_classes, width=int(schema.options.get("width", 8)))


def make_loss() -> nn.Module:
    """Optional: the training loss (a torch loss averaging over the batch). Label smoothing here."""
    return nn.CrossEntropyLoss(label_smoothing=0.05)
