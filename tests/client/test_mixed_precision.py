"""Choosing the precision: auto picks what is fast and correct on the device, and refuses what is not."""

from __future__ import annotations

import pytest
import torch

from client.mixed_precision import DPConfigError, resolve_amp

CPU = torch.device("cpu")


def test_resolve_amp_auto_and_explicit_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_amp("auto", device=CPU) == "off"  # bf16 measured slower on CPU (docs/benchmarks.md)
    assert resolve_amp("bf16", device=CPU) == "bf16"
    assert resolve_amp("fp16", device=CPU) == "fp16"
    assert resolve_amp("off", device=CPU) == "off"
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", device=cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", device=cuda) == "fp16"
    with pytest.raises(DPConfigError, match='set amp = "fp16" or "auto"'):
        resolve_amp("bf16", device=cuda)


def test_resolve_amp_refuses_unknown_values() -> None:
    with pytest.raises(DPConfigError, match="choose one of off, bf16, fp16, auto"):
        resolve_amp("fp8", device=CPU)
