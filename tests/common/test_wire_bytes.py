"""Bytes on the wire as Flower 1.39 ships a message; fails when Flower's object tree changes."""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.codecs import from_numpy, to_numpy
from common.int8_wire import INT8_RECORD, to_int8_record
from common.models import SmallImageCNN, TabularMLP
from common.wire_bytes import content_bytes


def _model_weights(model: object) -> OrderedDict[str, np.ndarray]:
    return to_numpy(ArrayRecord(model.state_dict()))  # type: ignore[attr-defined]


def test_the_count_covers_the_data_and_grows_with_it() -> None:
    small = RecordDict({"arrays": from_numpy({"w": np.ones(10, np.float32)})})
    large = RecordDict({"arrays": from_numpy({"w": np.ones(10_010, np.float32)})})
    # float32: 4 bytes a value; only the shape's digits in the headers change besides
    assert 40_000 <= content_bytes(large) - content_bytes(small) < 40_020
    with_config = RecordDict(
        {"arrays": from_numpy({"w": np.ones(10, np.float32)}), "c": ConfigRecord({"k": "x" * 500})}
    )
    assert content_bytes(with_config) > content_bytes(small) + 500


def test_counting_leaves_the_content_copyable() -> None:
    content = RecordDict({"arrays": from_numpy({"w": np.arange(100, dtype=np.float32)})})
    content_bytes(content)
    copy.deepcopy(content)  # Flower's SecAgg+ workflow copies what it sends
    pickle.dumps(content)


def test_int8_models_travel_in_at_most_0_27_of_float32s_bytes() -> None:
    for model in (TabularMLP(in_features=30, num_classes=2), SmallImageCNN(input_shape=(1, 8, 8), num_classes=10)):
        weights = _model_weights(model)
        floats = content_bytes(RecordDict({"arrays": from_numpy(weights)}))
        int8 = content_bytes(RecordDict({INT8_RECORD: to_int8_record(weights)}))
        assert int8 <= 0.27 * floats, (type(model).__name__, int8, floats)
