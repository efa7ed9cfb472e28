"""The bundle both sides parse: through a Flower message, to a file and back, and the flattening order it assumes."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import tenseal as ts
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from common.he.hospital import encrypt_update
from common.he.wire import (
    HEADER_KEY,
    METRICS,
    EncryptedUpdate,
    InvalidCiphertext,
    flatten,
    has_bundle,
    layout_id,
    put_bundle,
    take_bundle,
    unflatten,
)
from tests.common.he.helpers import model, size

RUN, ROUND = 2**63 + 5, 3  # Flower run ids are unsigned 64-bit


def test_bundle_survives_flower_message_transport(ctx: ts.Context) -> None:
    bundle = encrypt_update(model(), num_examples=17, context=ctx, run_id=RUN, server_round=ROUND)
    content = RecordDict()
    put_bundle(content, bundle)
    # What the SuperLink stores and forwards: every nested object deflated to bytes, then inflated.
    wire = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    received = inflate_object_from_contents(content.object_id, wire)
    assert take_bundle(received) == bundle
    assert bundle.header.num_chunks == 2 and bundle.header.num_values == size(
        model()
    )  # 2,112 values + 2 canaries > 2,048 slots
    assert len(bundle.chunks[0]) / (2048 * 4) < 8.1  # a full ciphertext against the float32 it replaces


def test_a_bundle_travels_as_one_array_however_many_ciphertexts_it_holds(ctx: ts.Context) -> None:
    """Every Flower object is one request at every hop: a bundle costs the same few objects whether it holds one
    ciphertext or many (it took two per ciphertext), and the split back into ciphertexts is exact."""

    def objects(weights: OrderedDict[str, np.ndarray]) -> tuple[int, EncryptedUpdate]:
        bundle = encrypt_update(weights, num_examples=3, context=ctx, run_id=1, server_round=1)
        content = RecordDict()
        put_bundle(content, bundle)
        return len(get_all_nested_objects(content)), bundle

    small, one = objects(OrderedDict(w=np.ones(10, np.float32)))
    large, five = objects(OrderedDict(w=np.ones(5 * 2048, np.float32)))
    assert one.header.num_chunks == 1 and five.header.num_chunks == 6
    assert large == small == 5  # RecordDict, the header's ConfigRecord, the ArrayRecord, its Array, one chunk
    content = RecordDict()
    put_bundle(content, five)
    assert take_bundle(content).chunks == five.chunks
    content[HEADER_KEY]["chunk-sizes"] = [len(c) for c in five.chunks] + [1]  # one more than the bytes hold
    with pytest.raises(InvalidCiphertext, match="chunk-sizes"):
        take_bundle(content)


def test_the_model_and_the_metrics_share_one_array_and_either_can_be_replaced(ctx: ts.Context) -> None:
    """A reply carries the update and the metrics: 8 objects with the Message, as plain mode's reply (16 before)."""
    update = encrypt_update(model(), num_examples=4, context=ctx, run_id=1, server_round=2)
    scores = encrypt_update(OrderedDict(m=np.ones(6)), num_examples=4, context=ctx, run_id=1, server_round=2)
    content = RecordDict()
    assert not has_bundle(content, part=METRICS)
    put_bundle(content, scores, part=METRICS)  # the metrics first: offsets, not order, find each part
    put_bundle(content, update)
    assert has_bundle(content) and has_bundle(content, part=METRICS)
    assert len(get_all_nested_objects(content)) == 5
    wire = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    received = inflate_object_from_contents(content.object_id, wire)
    assert take_bundle(received) == update and take_bundle(received, part=METRICS) == scores
    other = encrypt_update(OrderedDict(m=np.zeros(6)), num_examples=4, context=ctx, run_id=1, server_round=2)
    put_bundle(content, other, part=METRICS)  # replaced: the model's bytes stay where its offset says
    assert take_bundle(content) == update and take_bundle(content, part=METRICS) == other
    put_bundle(content, update)  # and the other way round
    assert take_bundle(content) == update and take_bundle(content, part=METRICS) == other
    only_metrics = RecordDict()
    put_bundle(only_metrics, other, part=METRICS)
    with pytest.raises(InvalidCiphertext, match=r"no encrypted update \(model"):
        take_bundle(only_metrics)


def test_bundle_file_round_trip_and_truncation(ctx: ts.Context) -> None:
    bundle = encrypt_update(model(), num_examples=5, context=ctx, run_id=1, server_round=1)
    blob = bundle.to_bytes()
    assert EncryptedUpdate.from_bytes(blob) == bundle
    with pytest.raises(InvalidCiphertext, match="truncated"):
        EncryptedUpdate.from_bytes(blob[:-10])


def test_a_fednova_sum_carries_its_effective_steps_and_other_headers_stay_as_they_were() -> None:
    from dataclasses import replace

    from common.he.wire import HEHeader

    plain = HEHeader("sum", 1, 2, "k", "l", num_values=3, num_chunks=1, slots=8, num_examples=9, contributors=2)
    assert b"effective_steps" not in plain.canonical()  # earlier files and digests are unchanged
    nova = replace(plain, effective_steps=12.375)
    assert HEHeader.parse(nova.canonical().decode()) == nova
    assert HEHeader.parse(plain.canonical().decode()).effective_steps is None
    with pytest.raises(InvalidCiphertext, match="only the server's sum"):
        HEHeader.parse(replace(nova, kind="update", contributors=1).canonical().decode())
    for bad in (0.5, float("inf"), True, "3"):
        text = nova.canonical().decode().replace("12.375", json.dumps(bad) if bad != float("inf") else "Infinity")
        with pytest.raises(InvalidCiphertext, match="effective_steps"):
            HEHeader.parse(text)


def test_take_bundle_reports_missing_or_malformed_records(ctx: ts.Context) -> None:
    with pytest.raises(InvalidCiphertext, match="no encrypted update"):
        take_bundle(RecordDict())
    content = RecordDict()
    put_bundle(content, encrypt_update(model(), num_examples=5, context=ctx, run_id=1, server_round=1))
    content[HEADER_KEY]["header"] = '{"kind": "update"}'
    with pytest.raises(InvalidCiphertext, match="header is malformed"):
        take_bundle(content)


def test_layout_id_depends_on_names_shapes_dtypes() -> None:
    base = model()
    assert layout_id(base) == layout_id(model(5))
    renamed = OrderedDict(("x" + k, v) for k, v in base.items())
    as64 = OrderedDict((k, v.astype(np.float64)) for k, v in base.items())
    assert len({layout_id(base), layout_id(renamed), layout_id(as64)}) == 3


def test_flatten_unflatten_round_trip() -> None:
    weights = model(4)
    weights["steps"] = np.array([3, 4], dtype=np.int64)
    flat = flatten(weights)
    assert flat.dtype == np.float64 and flat.size == size(weights)
    back = unflatten(flat, template=weights)
    assert list(back) == list(weights)
    assert all(back[k].dtype == weights[k].dtype and np.array_equal(back[k], weights[k]) for k in weights)
    with pytest.raises(InvalidCiphertext, match="do not fit"):
        unflatten(np.zeros(flat.size + 1), template=weights)
