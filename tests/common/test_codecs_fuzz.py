"""Fuzzing update validation: whatever a client sends, `check_update` accepts only the model's tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.codecs import InvalidUpdate, check_update
from tests.support.hostile import hostile_text, json_scalars

REFERENCE = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
FUZZ = settings(max_examples=200, deadline=None, derandomize=True)

dtypes = st.one_of(
    st.just(np.dtype(np.float32)),
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.complex_number_dtypes(),
    st.just(np.dtype(bool)),
    st.just(np.dtype(object)),
    st.just(np.dtype("U3")),
)
shapes = st.one_of(st.sampled_from([(3, 2), (2,), (2, 3), (6,), (), (0,), (3, 2, 1)]), hnp.array_shapes(min_dims=0))
arrays = st.one_of(
    st.builds(lambda a: a, hnp.arrays(np.float32, st.sampled_from([(3, 2), (2,)]))),  # NaN and inf included
    hnp.arrays(dtypes.filter(lambda d: d.kind != "O"), shapes),
    st.builds(lambda shape: np.empty(shape, dtype=object), st.sampled_from([(3, 2), (2,)])),
)
values = st.one_of(arrays, json_scalars(), st.lists(st.floats(), max_size=6))
names = st.one_of(st.sampled_from(["w", "b"]), hostile_text(max_size=8), st.integers(), st.none())


@st.composite
def updates(draw: st.DrawFn) -> dict:
    update = {name: draw(st.one_of(st.just(ref.copy()), values)) for name, ref in REFERENCE.items()}
    for name in draw(st.lists(names, max_size=2)):
        update[name] = draw(values)
    for name in draw(st.lists(st.sampled_from(sorted(REFERENCE)), max_size=1)):
        update.pop(name, None)
    return update


@FUZZ
@given(update=updates())
def test_any_update_is_accepted_only_when_it_matches_the_model(update: dict) -> None:
    try:
        check_update(update, reference=REFERENCE)
    except InvalidUpdate as exc:
        assert str(exc), "an InvalidUpdate must say what is wrong"
        return
    assert set(update) == set(REFERENCE)
    for name, ref in REFERENCE.items():
        value = update[name]
        assert isinstance(value, np.ndarray) and value.shape == ref.shape and value.dtype == ref.dtype
        assert np.isfinite(value).all()


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"w": [[0.0, 0.0]] * 3, "b": REFERENCE["b"]}, "tensor 'w' is a list, not an array"),
        ({"w": None, "b": REFERENCE["b"]}, "tensor 'w' is a NoneType, not an array"),
        ({"w": REFERENCE["w"], "b": REFERENCE["b"], 3: REFERENCE["b"]}, "unexpected [3]"),
    ],
)
def test_updates_that_crashed_the_check_are_invalid(update: dict, message: str) -> None:
    """Found by the fuzz: a non-array value (AttributeError) and a non-text name (TypeError sorting names)."""
    with pytest.raises(InvalidUpdate) as info:
        check_update(update, reference=REFERENCE)
    assert message in str(info.value)
