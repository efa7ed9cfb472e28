"""Weights on the wire: int8 error bounds, unbiased rounding and fresh entropy; flat float32 exact; malformed
payloads of either refused."""

from __future__ import annotations

import multiprocessing
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from common.codecs import InvalidUpdate, from_numpy
from common.int8_wire import (
    FLAT_RECORD,
    FLOAT_RECORD,
    INT8_RECORD,
    SCALES,
    VALUES,
    dequantize,
    fresh_generator,
    from_flat_record,
    from_int8_record,
    put_weights,
    quantize,
    take_weights,
    to_flat_record,
    to_int8_record,
)


def _weights() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict(
        w=rng.normal(0, 0.3, (16, 8)).astype(np.float32),
        b=rng.normal(0, 0.01, 8).astype(np.float32),
        z=np.zeros((2, 2), np.float32),
    )


def test_each_value_is_off_by_less_than_one_step_of_its_tensors_scale() -> None:
    weights = _weights()
    for tensor in weights.values():
        q, scale = quantize(tensor, rng=fresh_generator())
        assert q.dtype == np.int8 and q.shape == tensor.shape
        assert np.abs(q).max() <= 127
        assert np.all(np.abs(dequantize(q, scale) - tensor) < scale) or scale == 0
        assert float(scale) * 127 >= np.abs(tensor).max()  # every value in range: nothing clipped


def test_the_largest_value_travels_exactly_and_an_all_zero_tensor_stays_zero() -> None:
    tensor = np.array([-2.5, 0.1, 2.5], np.float32)
    q, scale = quantize(tensor, rng=fresh_generator())
    assert q[0] == -127 and q[2] == 127 and np.isclose(scale, 2.5 / 127, rtol=1e-6)
    zeros, zero_scale = quantize(np.zeros(5, np.float32), rng=fresh_generator())
    assert zero_scale == 0 and not zeros.any()


def test_stochastic_rounding_is_unbiased_and_round_to_nearest_would_fail_the_same_check() -> None:
    # Values whose fractional position between two levels runs over 0.05 .. 0.95: a biased rounding shows up
    # as a mean error of up to half a step. 4000 draws make the standard error of each mean at most
    # 0.5 / sqrt(4000) = 0.008 steps; the tolerance of 0.05 steps is over 6 standard errors (a false failure
    # has probability ~1e-9 per value), and round-to-nearest's bias (up to 0.45 steps) is 9x the tolerance.
    fractions = np.linspace(0.05, 0.95, 19)
    tensor = np.concatenate([[127.0], 10 + fractions, -40 - fractions]).astype(np.float32)  # scale 1.0 exactly
    draws = 4000
    total = np.zeros(tensor.shape, np.float64)
    for _ in range(draws):
        q, scale = quantize(tensor, rng=fresh_generator())
        assert scale == np.float32(1.0)
        total += dequantize(q, scale)
    bias = total / draws - tensor.astype(np.float64)  # in steps, as the scale is 1
    tolerance = 0.05
    assert np.abs(bias).max() < tolerance
    nearest_bias = np.round(tensor.astype(np.float64)) - tensor
    assert np.abs(nearest_bias).max() > 8 * tolerance  # the check has the power to catch a biased rounding


def _quantize_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q, _ = quantize(
        np.full(256, 0.5, np.float32) * np.linspace(-1, 1, 256, dtype=np.float32) + 0.3, rng=fresh_generator()
    )
    queue.put(q.tobytes())


def test_forked_workers_round_with_their_own_entropy() -> None:
    """A ClientApp is forked from a warm parent: two forks must not make the same rounding choices."""
    fresh_generator()  # the parent drew before forking, as a warm executor would
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_quantize_in_child, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert results[0] != results[1]  # 256 values, most with a fractional part: equal by chance ~2**-200


def test_a_record_round_trips_in_the_models_names_shapes_and_dtypes() -> None:
    weights = _weights()
    record = to_int8_record(weights)
    assert set(record) == {VALUES, SCALES}
    back = from_int8_record(record, reference=weights)
    assert list(back) == list(weights)
    for name, tensor in weights.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert np.abs(back[name] - tensor).max() <= np.abs(tensor).max() / 127 + 1e-7


def test_put_and_take_choose_the_record_by_the_compression() -> None:
    weights = _weights()
    for compression, key in (("none", FLAT_RECORD), ("int8", INT8_RECORD)):
        content = RecordDict()
        put_weights(content, weights, compression=compression)
        assert list(content) == [key]
        back = take_weights(content, reference=weights)
        assert all(np.allclose(back[k], weights[k], atol=0.01) for k in weights)


def test_float32_travels_as_one_exact_array_and_other_dtypes_one_array_per_tensor() -> None:
    weights = _weights()
    content = RecordDict()
    put_weights(content, weights, compression="none")
    assert list(content[FLAT_RECORD]) == [VALUES]  # one array on the wire, not one per tensor
    back = take_weights(content, reference=weights)
    assert list(back) == list(weights)
    assert all(back[k].shape == weights[k].shape and np.array_equal(back[k], weights[k]) for k in weights)

    counted = OrderedDict([*weights.items(), ("steps", np.array([3], np.int64))])
    content = RecordDict()
    put_weights(content, counted, compression="none")
    assert list(content) == [FLOAT_RECORD] and list(content[FLOAT_RECORD]) == list(counted)
    assert np.array_equal(take_weights(content, reference=counted)["steps"], counted["steps"])


def test_per_tensor_float32_from_an_older_sender_is_still_read() -> None:
    weights = _weights()
    back = take_weights(RecordDict({FLOAT_RECORD: from_numpy(weights)}), reference=weights)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (ArrayRecord(OrderedDict([(VALUES, Array(np.zeros(139, np.float32)))])), "hold 139 numbers, the model has 140"),
        (ArrayRecord(OrderedDict([(VALUES, Array(np.zeros(140, np.float64)))])), "flat weights are float64"),
        (ArrayRecord(OrderedDict([(VALUES, Array(np.zeros((10, 14), np.float32)))])), "expected a 1-D float32 array"),
        (ArrayRecord(OrderedDict([("w", Array(np.zeros(140, np.float32)))])), "need exactly the array"),
    ],
    ids=["wrong-size", "float64", "not-flat", "wrong-name"],
)
def test_a_malformed_flat_payload_is_refused_with_the_reason(record: ArrayRecord, reason: str) -> None:
    assert from_flat_record(to_flat_record(_weights()), reference=_weights())  # the baseline is valid
    with pytest.raises(InvalidUpdate, match=reason):
        from_flat_record(record, reference=_weights())


def test_a_flat_payload_with_nan_is_refused() -> None:
    weights = _weights()
    weights["b"][3] = np.nan
    with pytest.raises(InvalidUpdate, match="NaN"):
        take_weights(RecordDict({FLAT_RECORD: to_flat_record(weights)}), reference=_weights())


def _record(values: np.ndarray, scales: np.ndarray) -> ArrayRecord:
    return ArrayRecord(OrderedDict([(VALUES, Array(values)), (SCALES, Array(scales))]))


GOOD_VALUES = np.zeros(16 * 8 + 8 + 4, np.int8)
GOOD_SCALES = np.ones(3, np.float32)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(GOOD_VALUES.astype(np.float32), GOOD_SCALES), "int8 values are float32"),
        (_record(GOOD_VALUES.astype(np.int16), GOOD_SCALES), "int8 values are int16"),
        (ArrayRecord(OrderedDict([(VALUES, Array(GOOD_VALUES))])), "need exactly the arrays"),
        (_record(GOOD_VALUES, np.array([1.0, np.nan, 1.0], np.float32)), "finite and >= 0"),
        (_record(GOOD_VALUES, np.array([1.0, np.inf, 1.0], np.float32)), "finite and >= 0"),
        (_record(GOOD_VALUES, np.array([1.0, -1.0, 1.0], np.float32)), "finite and >= 0"),
        (_record(GOOD_VALUES, np.ones(2, np.float32)), "one per tensor"),
        (_record(GOOD_VALUES, GOOD_SCALES.astype(np.float64)), "int8 scales are float64"),
        (_record(GOOD_VALUES[:-1], GOOD_SCALES), "hold 139 numbers, the model has 140"),
        (_record(GOOD_VALUES.reshape(10, 14), GOOD_SCALES), "expected a 1-D int8 array"),
        (_record(np.full(140, -128, np.int8), GOOD_SCALES), "-128 was sent"),
    ],
    ids=["float-values", "int16-values", "no-scales", "nan-scale", "inf-scale", "negative-scale",
         "too-few-scales", "float64-scales", "wrong-size", "not-flat", "minus-128"],
)  # fmt: skip
def test_a_malformed_int8_payload_is_refused_with_the_reason(record: ArrayRecord, reason: str) -> None:
    assert from_int8_record(_record(GOOD_VALUES, GOOD_SCALES), reference=_weights())  # the baseline is valid
    with pytest.raises(InvalidUpdate, match=reason):
        from_int8_record(record, reference=_weights())


def test_a_message_with_both_forms_or_neither_is_refused() -> None:
    weights = _weights()
    for first, second in ((FLOAT_RECORD, INT8_RECORD), (FLAT_RECORD, INT8_RECORD), (FLOAT_RECORD, FLAT_RECORD)):
        both = RecordDict({first: from_numpy(weights), second: to_int8_record(weights)})
        with pytest.raises(InvalidUpdate, match="send one"):
            take_weights(both, reference=weights)
    with pytest.raises(InvalidUpdate, match="no model weights"):
        take_weights(RecordDict(), reference=weights)
    with pytest.raises(ValueError, match="NaN"):
        to_int8_record({"w": np.array([np.nan], np.float32)})
