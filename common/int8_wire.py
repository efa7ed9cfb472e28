"""Model weights on the wire: float32 as one flat array, or int8 (a quarter of the bytes, unbiased on average).

Flower moves every array of a message as objects of its own, each one request per hop (ServerApp, SuperLink,
SuperNode, ClientApp): a six-tensor model as one array per tensor made a train reply 19 objects, flat 9. On two
cores that request traffic, not training, was most of a plain round's CPU (docs/benchmarks.md). Both
forms carry values only, concatenated in the model's order; names, shapes and dtypes are the receiver's own
model's. A model with any tensor that is not float32 travels one array per tensor (`FLOAT_RECORD`), as do
messages from a fedcare that predates the flat form.

int8:

Each tensor gets one scale, `max|w| / 127`, and each value is rounded *stochastically* to one of
its two neighbouring integers, up with probability equal to its fractional part. The expected
dequantized value is then exactly the float32 value, so the error averages out across hospitals
and rounds instead of adding up in one direction as round-to-nearest would.

The randomness comes from the operating system for every message (`fresh_generator`): a ClientApp
is forked from a warm parent (fedcare/warm_executor.py), and a generator made in the parent would
give every hospital, and every round, the same rounding.

On the wire (one record, few objects: Flower pays about 480 bytes per array, which would eat the
saving for a small MLP): `values`, every tensor flattened and concatenated in the model's order as
int8, and `scales`, one float32 per tensor. Names, shapes and dtypes are the receiver's own model's.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from common.codecs import InvalidUpdate, check_update, from_numpy, to_numpy

FLOAT_RECORD = "arrays"  # RecordDict key of float32 weights (plain ArrayRecord, one array per tensor)
FLAT_RECORD = "arrays-flat"  # RecordDict key of float32 weights as one `values` array
INT8_RECORD = "arrays-int8"  # RecordDict key of int8 weights: the `values` and `scales` arrays below
WEIGHT_RECORDS = (FLOAT_RECORD, FLAT_RECORD, INT8_RECORD)  # a message carries its weights under one of these
VALUES, SCALES = "values", "scales"
LEVELS = 127  # symmetric: -127..127, so -w quantizes like w


def fresh_generator() -> np.random.Generator:
    """A generator seeded from OS entropy now: never shared with a forked sibling or an earlier message."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


def tensor_scale(tensor: np.ndarray) -> np.float32:
    """The float32 scale with |tensor| / scale <= 127 for every value (0 for an all-zero tensor)."""
    peak = float(np.max(np.abs(tensor))) if tensor.size else 0.0
    scale = np.float32(peak / LEVELS)
    while float(scale) * LEVELS < peak:  # float32 rounded down: one step up keeps every value in range
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def quantize(tensor: np.ndarray, *, rng: np.random.Generator) -> tuple[np.ndarray, np.float32]:
    """int8 values and their scale; E[values * scale] == tensor (stochastic rounding)."""
    if not np.isfinite(tensor).all():
        raise ValueError("cannot quantize NaN or infinite values")
    scale = tensor_scale(tensor)
    if scale == 0:
        return np.zeros(tensor.shape, np.int8), scale
    scaled = tensor.astype(np.float64) / float(scale)
    rounded = np.floor(scaled + rng.random(tensor.shape))
    return np.clip(rounded, -LEVELS, LEVELS).astype(np.int8), scale


def dequantize(values: np.ndarray, scale: np.float32) -> np.ndarray:
    return (values.astype(np.float32) * np.float32(scale)).astype(np.float32)


def to_int8_record(weights: Mapping[str, np.ndarray], *, rng: np.random.Generator | None = None) -> ArrayRecord:
    """Quantize every (floating) tensor, with a fresh generator unless one is given (tests)."""
    rng = fresh_generator() if rng is None else rng
    values, scales = [], []
    for name, tensor in weights.items():
        if not np.issubdtype(tensor.dtype, np.floating):
            raise ValueError(f"tensor {name!r} is {tensor.dtype}; only floating-point weights are quantized")
        q, scale = quantize(tensor, rng=rng)
        values.append(q.ravel())
        scales.append(scale)
    flat = np.concatenate(values) if values else np.zeros(0, np.int8)
    return ArrayRecord(OrderedDict([(VALUES, Array(flat)), (SCALES, Array(np.asarray(scales, dtype=np.float32)))]))


def from_int8_record(record: ArrayRecord, *, reference: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The weights an int8 record carries, in `reference`'s names, shapes and dtypes; InvalidUpdate when malformed."""
    if set(record) != {VALUES, SCALES}:
        raise InvalidUpdate(f"int8 weights need exactly the arrays {VALUES!r} and {SCALES!r}, got {sorted(record)}")
    values, scales = record[VALUES].numpy(), record[SCALES].numpy()
    if values.dtype != np.int8 or values.ndim != 1:
        raise InvalidUpdate(f"int8 values are {values.dtype} of shape {values.shape}, expected a 1-D int8 array")
    if scales.dtype != np.float32 or scales.shape != (len(reference),):
        raise InvalidUpdate(
            f"int8 scales are {scales.dtype} of shape {scales.shape}, expected float32 of shape ({len(reference)},): "
            "one per tensor"
        )
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise InvalidUpdate("int8 scales must be finite and >= 0 (a NaN, infinite or negative scale was sent)")
    expected = sum(int(ref.size) for ref in reference.values())
    if values.size != expected:
        raise InvalidUpdate(f"int8 values hold {values.size} numbers, the model has {expected}")
    if values.size and int(np.min(values)) < -LEVELS:
        raise InvalidUpdate(f"int8 values must lie in -{LEVELS}..{LEVELS}; -128 was sent")
    weights: OrderedDict[str, np.ndarray] = OrderedDict()
    start = 0
    for (name, ref), scale in zip(reference.items(), scales, strict=True):
        chunk = values[start : start + ref.size]
        weights[name] = dequantize(chunk, scale).reshape(ref.shape).astype(ref.dtype)
        start += ref.size
    return weights


def to_flat_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Every tensor (all float32) flattened and concatenated in the model's order, as one array."""
    parts = [np.ascontiguousarray(t, dtype=np.float32).ravel() for t in weights.values()]
    return ArrayRecord(OrderedDict([(VALUES, Array(np.concatenate(parts) if parts else np.zeros(0, np.float32)))]))


def from_flat_record(record: ArrayRecord, *, reference: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The weights a flat record carries, in `reference`'s names and shapes; InvalidUpdate when malformed."""
    if set(record) != {VALUES}:
        raise InvalidUpdate(f"flat float32 weights need exactly the array {VALUES!r}, got {sorted(record)}")
    values = record[VALUES].numpy()
    if values.dtype != np.float32 or values.ndim != 1:
        raise InvalidUpdate(f"flat weights are {values.dtype} of shape {values.shape}, expected a 1-D float32 array")
    expected = sum(int(ref.size) for ref in reference.values())
    if values.size != expected:
        raise InvalidUpdate(f"flat weights hold {values.size} numbers, the model has {expected}")
    weights: OrderedDict[str, np.ndarray] = OrderedDict()
    start = 0
    for name, ref in reference.items():
        weights[name] = values[start : start + ref.size].reshape(ref.shape)
        start += ref.size
    return weights


def put_weights(content: RecordDict, weights: Mapping[str, np.ndarray], *, compression: str) -> None:
    """Put `weights` into a message as the run's `update-compression` says: int8, else float32 (flat when every
    tensor is float32)."""
    if compression == "int8":
        content[INT8_RECORD] = to_int8_record(weights)
    elif all(t.dtype == np.float32 for t in weights.values()):
        content[FLAT_RECORD] = to_flat_record(weights)
    else:
        content[FLOAT_RECORD] = from_numpy(dict(weights))


def take_weights(
    content: RecordDict, *, reference: Mapping[str, np.ndarray], missing: str = "the message carries no model weights"
) -> OrderedDict[str, np.ndarray]:
    """The weights in a message, float32 (flat or per tensor) or int8, checked against `reference`; InvalidUpdate
    otherwise (`missing`: its reason when there are none)."""
    floats, flat, int8 = content.get(FLOAT_RECORD), content.get(FLAT_RECORD), content.get(INT8_RECORD)
    if sum(record is not None for record in (floats, flat, int8)) > 1:
        present = [key for key in WEIGHT_RECORDS if key in content]
        raise InvalidUpdate(f"the message carries weights under {present}; send one")
    if isinstance(int8, ArrayRecord):
        weights = from_int8_record(int8, reference=reference)
    elif isinstance(flat, ArrayRecord):
        weights = from_flat_record(flat, reference=reference)
    elif isinstance(floats, ArrayRecord):
        weights = to_numpy(floats)
    else:
        raise InvalidUpdate(missing)
    check_update(weights, reference=dict(reference))
    return weights
