"""A message's content as one object: the same content back, from the flat form and from Flower's own."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents, validate_object_content
from flwr.supercore.task_identity import TaskIdentity

from fedcare.flower_internals.flat_records import FLAT_MARK, flatten_record_dicts


@pytest.fixture
def stock_then_flat(monkeypatch: pytest.MonkeyPatch):
    """Flower's RecordDict as it ships for the test's first part; flat after `flatten_record_dicts()`, and as
    it ships again afterwards (other tests deflate messages in this process)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)  # a message is made inside a run
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    saved = {name: RecordDict.__dict__[name] for name in ("children", "deflate", "inflate")}
    yield
    for name, value in saved.items():
        setattr(RecordDict, name, value)
    if "_fedcare_flat" in RecordDict.__dict__:
        del RecordDict._fedcare_flat


def _content() -> RecordDict:
    big = np.random.default_rng(0).standard_normal((700, 300)).astype(np.float32)  # > Flower's chunk size
    return RecordDict(
        {
            "weights": ArrayRecord({"layer.weight": Array(big), "layer.bias": Array(np.arange(3, dtype=np.float64))}),
            "config": ConfigRecord({"server-round": 3, "he": b"\x00\x01cipher", "names": ["a", "b"], "ok": True}),
            "metrics": MetricRecord({"loss": 0.25, "examples": 120}),
        }
    )


def _objects(message: Message) -> dict[str, bytes]:
    return {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a) == list(b)
    for name, array in a["weights"].items():
        got = b["weights"][name]
        assert (got.dtype, got.shape) == (array.dtype, array.shape)
        np.testing.assert_array_equal(got.numpy(), array.numpy())
    assert dict(b["config"]) == dict(a["config"]) and dict(b["metrics"]) == dict(a["metrics"])


def test_a_flat_message_is_two_objects_and_inflates_to_the_same_content(stock_then_flat) -> None:
    stock = _objects(Message(_content(), dst_node_id=7, message_type="train"))
    assert len(stock) > 6  # the message, its RecordDict, 3 records, 2 arrays and their chunks

    flatten_record_dicts()
    flatten_record_dicts()  # twice is once
    message = Message(_content(), dst_node_id=7, message_type="train")
    objects = _objects(message)
    assert len(objects) == 2  # the message and its content
    for content in objects.values():
        validate_object_content(content)  # what the SuperLink checks of every object pushed to it
    flat = objects[message.content.object_id]
    assert FLAT_MARK in flat

    back = inflate_object_from_contents(message.object_id, dict(objects))
    _same(_content(), back.content)


def test_content_deflated_the_stock_way_still_inflates(stock_then_flat) -> None:
    message = Message(_content(), dst_node_id=7, message_type="train")
    stock, message_id = _objects(message), message.object_id  # e.g. a reply a stock SuperNode made
    flatten_record_dicts()
    back = inflate_object_from_contents(message_id, dict(stock))
    _same(_content(), back.content)


def test_a_flat_recorddict_that_claims_children_is_refused(stock_then_flat) -> None:
    flatten_record_dicts()
    flat = _content().deflate()
    with pytest.raises(ValueError, match="no children"):  # a tree that lists children for it was tampered with
        RecordDict.inflate(flat, children={"0" * 64: ConfigRecord({"x": 1})})
