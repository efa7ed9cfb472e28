"""A small ResNet with GroupNorm for the image task: residual stages, no batch statistics.

GroupNorm instead of BatchNorm because DP-SGD clips each sample's gradient, and batch statistics
would mix samples. Three stages of one block each (width w, 2w, 4w) keep the parameter count near
80k at w = 16, so CKKS encryption and SecAgg+ masking of an update stay well under a second.

The head pools to a coarse grid (4x4 by default), not to one value per channel. Global average
pooling throws away where a feature is, so the linear head can only separate classes once the
convolutions have learnt position-free class features; DP-SGD's noise on a few hundred images per
hospital never lets them get there (the demo's digits stayed at chance at epsilon 1 to 8, and reached
0.40 centrally at epsilon 3), while a head that sees the layout learns from the first rounds (0.89
centrally at epsilon 3). docs/benchmarks.md, "The image task under DP", has the measurements.
"""

from __future__ import annotations

import torch
from torch import nn


def _groups(channels: int) -> int:
    """Groups of 4 channels at most 8 groups: the GroupNorm paper's setting, scaled down."""
    return max(1, min(8, channels // 4))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions around a shortcut (a 1x1 convolution when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.GroupNorm(_groups(out_channels), out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three residual stages (the last two halve the resolution), average pool to a `grid` x `grid`
    layout, linear head. `grid = 1` is the classic global average pool."""

    def __init__(self, *, channels: int, num_classes: int, width: int = 16, grid: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            ResidualBlock(width, width, stride=1),
            ResidualBlock(width, 2 * width, stride=2),
            ResidualBlock(2 * width, 4 * width, stride=2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(4 * width * grid * grid, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
