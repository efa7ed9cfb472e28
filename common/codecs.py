"""Moving model weights in and out of Flower messages, and checking them on the way in.

A faulty or malicious hospital can send anything; the server accepts only
updates with exactly the global model's tensors, shapes and finite values.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


class InvalidUpdate(ValueError):
    """An update that cannot be aggregated; the message says what is wrong."""


def to_record(state_dict: dict[str, torch.Tensor]) -> ArrayRecord:
    """Strip Opacus' `_module.` prefix so every site exchanges the same key names."""
    clean = OrderedDict((k.removeprefix("_module."), v.detach().cpu()) for k, v in state_dict.items())
    return ArrayRecord(clean)


def from_numpy(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in weights.items()))


def to_numpy(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.numpy()) for k, v in record.items())


def to_state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in to_numpy(record).items())


def check_update(update: dict[str, np.ndarray], *, reference: dict[str, np.ndarray]) -> None:
    """Raise InvalidUpdate unless `update` matches `reference` in keys, shapes and finiteness."""
    if set(update) != set(reference):
        missing = sorted(set(reference) - set(update), key=repr)  # names of any type: a client may send anything
        extra = sorted(set(update) - set(reference), key=repr)
        raise InvalidUpdate(f"tensor names differ from the global model (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        value = update[name]
        if not isinstance(value, np.ndarray):
            raise InvalidUpdate(f"tensor {name!r} is a {type(value).__name__}, not an array")
        if value.shape != ref.shape:
            raise InvalidUpdate(f"tensor {name!r} has shape {value.shape}, expected {ref.shape}")
        if value.dtype != ref.dtype:
            raise InvalidUpdate(f"tensor {name!r} has dtype {value.dtype}, expected {ref.dtype}")
        if not np.isfinite(value).all():
            raise InvalidUpdate(f"tensor {name!r} contains NaN or infinite values")


def save_weights(weights: dict[str, np.ndarray], path: Path) -> None:
    """Save as a PyTorch state dict, the form `model.load_state_dict(torch.load(path))` expects."""
    torch.save(OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in weights.items()), path)


def weights_to_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """Weights as one `.npz` blob (names and order kept, no pickle): for checkpoints and kept updates."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in weights.items()})
    return buffer.getvalue()


def weights_from_bytes(blob: bytes) -> OrderedDict[str, np.ndarray]:
    """The weights `weights_to_bytes` wrote; raises InvalidUpdate for anything else."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return OrderedDict((name, data[name]) for name in data.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidUpdate(f"not a weights blob: {exc}") from exc
