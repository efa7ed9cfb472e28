"""A trained model made small for inference at a hospital: int8 weights, loadable with torch alone.

- Linear layers: PyTorch's dynamic quantization (`quantize_dynamic`): int8 weights, and int8 matrix
  products with activations quantized on the fly. They hold nearly all of both models' weights.
- Convolutions (the digits CNN): weight-only int8, one scale per output channel, dequantized at each
  call. Static quantization would also run the convolutions in int8, but needs calibration data at the
  coordinator and quantized GroupNorm; these convolutions hold under 15% of the CNN's weights and a few
  thousand multiply-adds per image, so the file is what matters and weight-only gets it.

The result is saved as TorchScript: a hospital runs it with `torch.jit.load(path)`, without fedcare
or the model's Python class (docs/compression.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 127


class Int8WeightConv2d(nn.Module):
    """A Conv2d whose weights are kept as int8 with one scale per output channel (round to nearest:
    a model exported once has no average for stochastic rounding to keep unbiased)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError(f"padding {conv.padding!r} is not supported; give the padding in pixels")
        weight = conv.weight.detach().float()
        scale = weight.abs().amax(dim=(1, 2, 3)).clamp(min=torch.finfo(torch.float32).tiny) / LEVELS
        values = torch.round(weight / scale.view(-1, 1, 1, 1)).clamp(-LEVELS, LEVELS).to(torch.int8)
        self.register_buffer("weight_int8", values)
        self.register_buffer("scale", scale)
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias)
        self.stride: list[int] = list(conv.stride)
        self.padding: list[int] = list(conv.padding)
        self.dilation: list[int] = list(conv.dilation)
        self.groups: int = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.float() * self.scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _replace_convolutions(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, Int8WeightConv2d(child))
        else:
            _replace_convolutions(child)


def quantize_for_inference(model: nn.Module) -> nn.Module:
    """An int8 copy of `model` for CPU inference; `model` itself is left as it is."""
    quantized = copy.deepcopy(model).cpu().eval()
    _replace_convolutions(quantized)
    return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8)


def save_for_inference(model: nn.Module, path: Path) -> int:
    """Save `model` (float32 or quantized) as TorchScript; returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path.stat().st_size


def load_for_inference(path: Path) -> torch.jit.ScriptModule:
    """What a hospital does: no fedcare class needed, only torch."""
    model = torch.jit.load(str(path), map_location="cpu")
    model.eval()
    return model
