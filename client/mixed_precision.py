"""Mixed precision for local training, done so that DP-SGD stays correct.

Opacus 1.6 with fp16 and a stock ``GradScaler`` runs but is wrong: Opacus clips
per-sample gradients that still carry the loss scale, so every sample is cut to
the clipping bound whatever its true norm, or overflows to inf and vanishes.
``PerSampleLossScaler`` removes the scale from the per-sample gradients *before*
the optimizer clips them (``client.dp_training.dp_step`` uses it).
"""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch
from torch import nn

from common.settings import AmpMode

ResolvedAmp = Literal["off", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = get_args(AmpMode)
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DPConfigError(ValueError):
    """A DP, precision or training setting that cannot work; the message says what to change.

    Declared here, with the precision choice every training path makes first, so plain training,
    DP-SGD and the hospital's round share one error.
    """


def resolve_amp(amp: str, *, device: torch.device) -> ResolvedAmp:
    """The precision a run will use.

    ``auto`` is bf16 on CUDA GPUs that support it (fp32's range, so no loss
    scaling, and every grad-sample mode but ``ew`` works), fp16 on older GPUs,
    and *off on CPU*: measured on a Xeon with AMX-bf16 (docs/benchmarks.md),
    bf16 autocast made a DP epoch of the MLP 2.3x slower and the CNN's no faster,
    because casting dominates such small layers. bf16 and fp16 can still be asked
    for on CPU (CPU autocast supports both in torch 2.13), which is how the fp16
    fix is tested without a GPU.
    """
    if amp not in AMP_MODES:
        raise DPConfigError(f"amp = {amp!r} is not a precision; choose one of {', '.join(AMP_MODES)}")
    if amp == "off":
        return "off"
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise DPConfigError(f'amp = {amp!r}: torch has no autocast for device {device.type!r}; set amp = "off"')
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DPConfigError(
            'amp = "bf16": this GPU has no bf16 support (torch.cuda.is_bf16_supported() is False); '
            'set amp = "fp16" or "auto"'
        )
    return amp  # type: ignore[return-value]


def autocast(amp: ResolvedAmp, device_type: str) -> contextlib.AbstractContextManager[object]:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AMP_DTYPES[amp])


class PerSampleLossScaler:
    """Dynamic fp16 loss scaling that reaches Opacus' per-sample gradients.

    ``GradScaler.unscale_`` only sees ``p.grad``; Opacus clips ``p.grad_sample``.
    So the scale is divided out of ``grad_sample`` here, and the scale is managed
    through ``GradScaler.update(new_scale=...)`` with GradScaler's own backoff,
    growth factor and interval (its automatic update needs ``scaler.step``,
    which would bypass the per-sample fix).

    The first scale is 2**12, not GradScaler's 2**16: Opacus' per-sample
    gradients are not divided by the batch size, so 2**16 overflowed fp16 in
    the first 1-2 steps of every round (a fresh scaler each round), and each
    dropped step is privacy budget the ledger already counted. 2**12 dropped
    none for the MLP and the CNN over three rounds.
    """

    def __init__(self, device_type: str, *, init_scale: float = 2.0**12) -> None:
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale)
        self._good_steps = 0

    def get_scale(self) -> float:
        return float(self.scaler.get_scale())

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale_per_sample(self, params: list[nn.Parameter]) -> bool:
        """Divide the scale out of every ``p.grad_sample`` in fp32; False if any value is not finite."""
        scale = self.get_scale()
        finite = True
        for p in params:
            unscaled = p.grad_sample.float() / scale
            finite = finite and bool(torch.isfinite(unscaled).all())
            p.grad_sample = unscaled
        return finite

    def update(self, *, finite: bool) -> None:
        if not finite:
            self._good_steps = 0
            self.scaler.update(new_scale=self.get_scale() * self.scaler.get_backoff_factor())
            return
        self._good_steps += 1
        if self._good_steps >= self.scaler.get_growth_interval():
            self._good_steps = 0
            self.scaler.update(new_scale=self.get_scale() * self.scaler.get_growth_factor())
