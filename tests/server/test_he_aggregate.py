"""The server's encrypted FedAvg: equal to plaintext FedAvg, and a bad update costs only its sender."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts

from common.he.hospital import decrypt_sum, encrypt_update
from common.he.keys import HEKeyError, make_keys
from common.he.params import HEParams
from common.he.wire import EncryptedUpdate, InvalidCiphertext, layout_id
from server.fedavg import ClientUpdate, fedavg
from server.he_aggregate import EmptyAggregate, HEAggregator

RUN, ROUND = 4242, 2
COUNTS = {"st-mary": 120, "north": 45, "east": 311}


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_keys()


@pytest.fixture(scope="module")
def ctx(keys: tuple[bytes, bytes]) -> ts.Context:
    return ts.context_from(keys[0])


@pytest.fixture(scope="module")
def updates() -> dict[str, OrderedDict[str, np.ndarray]]:
    """An MLP's shapes plus a spare tensor (5,130 values: 3 chunks), different random weights per hospital."""
    rng = np.random.default_rng(7)
    shapes = {
        "net.0.weight": (64, 30),
        "net.0.bias": (64,),
        "net.2.weight": (32, 64),
        "net.2.bias": (32,),
        "net.4.weight": (2, 32),
        "net.4.bias": (2,),
        "extra": (1000,),
    }
    return {
        name: OrderedDict((k, rng.normal(0, 0.5, size=s).astype(np.float32)) for k, s in shapes.items())
        for name in COUNTS
    }


@pytest.fixture(scope="module")
def bundles(updates, ctx) -> dict[str, EncryptedUpdate]:
    return {
        name: encrypt_update(w, num_examples=COUNTS[name], context=ctx, run_id=RUN, server_round=ROUND)
        for name, w in updates.items()
    }


def template(updates) -> OrderedDict[str, np.ndarray]:
    return next(iter(updates.values()))


def aggregator(keys, updates, **kw) -> HEAggregator:
    n = sum(w.size for w in template(updates).values())
    return HEAggregator(keys[1], expected_values=n, run_id=RUN, server_round=ROUND, **kw)


def plain_fedavg(updates, names) -> OrderedDict[str, np.ndarray]:
    return fedavg([ClientUpdate(n, i, updates[n], COUNTS[n]) for i, n in enumerate(names)])


def max_abs(a, b) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)


def test_he_fedavg_equals_plaintext_fedavg(keys, ctx, updates, bundles) -> None:
    agg = aggregator(keys, updates, layout=layout_id(template(updates)))
    for name, bundle in bundles.items():
        agg.add(bundle, institution=name)
    total_bundle, total = agg.result()
    assert total == sum(COUNTS.values()) and total_bundle.header.contributors == 3
    averaged = decrypt_sum(total_bundle, context=ctx, template=template(updates), run_id=RUN, server_round=ROUND)
    assert max_abs(averaged, plain_fedavg(updates, list(COUNTS))) < 1e-5
    assert all(averaged[k].dtype == np.float32 for k in averaged)
    assert set(agg.bytes_received) == set(COUNTS) and agg.accepted == list(COUNTS)


def test_aggregator_refuses_a_secret_context(keys, updates) -> None:
    with pytest.raises(HEKeyError, match="holds a secret key"):
        HEAggregator(keys[0], expected_values=10, run_id=RUN, server_round=ROUND)


def flip_middle(bundle: EncryptedUpdate, *, chunk: int, reseal: bool) -> EncryptedUpdate:
    chunks = list(bundle.chunks)
    damaged = bytearray(chunks[chunk])
    mid = len(damaged) // 2
    damaged[mid : mid + 16] = bytes(b ^ 0xFF for b in damaged[mid : mid + 16])
    chunks[chunk] = bytes(damaged)
    out = replace(bundle, chunks=tuple(chunks))
    return out.sealed() if reseal else out


@pytest.mark.parametrize(
    ("reseal", "match"), [(False, "digest does not match"), (True, "chunk 2 does not deserialize")]
)
def test_tampered_update_is_rejected_and_round_completes(keys, ctx, updates, bundles, caplog, reseal, match) -> None:
    """Flipped bytes, with the digest left stale (damage in transit) or recomputed (a sender's doing).
    The last chunk is damaged, so a rejected update must not leave its first chunks in the sum."""
    agg = aggregator(keys, updates)
    agg.add(bundles["st-mary"], institution="st-mary")
    before = agg.result()[0]
    with caplog.at_level(logging.WARNING, logger="server.he_aggregate"):
        with pytest.raises(InvalidCiphertext, match=match):
            agg.add(flip_middle(bundles["north"], chunk=2, reseal=reseal), institution="north")
    assert f"run {RUN} round {ROUND}: rejected encrypted update from north" in caplog.text
    assert agg.result()[0] == before and agg.total_examples == COUNTS["st-mary"]
    agg.add(bundles["east"], institution="east")
    averaged = decrypt_sum(agg.result()[0], context=ctx, template=template(updates))
    assert max_abs(averaged, plain_fedavg(updates, ["st-mary", "east"])) < 1e-5
    assert agg.accepted == ["st-mary", "east"] and "north" in agg.rejected and "north" in agg.bytes_received


def reseal(bundle: EncryptedUpdate, **header_changes) -> EncryptedUpdate:
    return replace(bundle, header=replace(bundle.header, **header_changes)).sealed()


def test_wrong_length_is_rejected(keys, ctx, updates, bundles) -> None:
    short = OrderedDict(list(template(updates).items())[:-1])
    with pytest.raises(InvalidCiphertext, match="4130 values, the model has 5130"):
        aggregator(keys, updates).add(
            encrypt_update(short, num_examples=3, context=ctx, run_id=RUN, server_round=ROUND), institution="north"
        )
    missing_chunk = replace(bundles["north"], chunks=bundles["north"].chunks[:-1]).sealed()
    with pytest.raises(InvalidCiphertext, match="2 chunks of 2048 slots, expected 3"):
        aggregator(keys, updates).add(missing_chunk, institution="north")
    # Header claims the right size, but the first chunk is the (shorter) last one.
    chunks = bundles["north"].chunks
    swapped = replace(bundles["north"], chunks=(chunks[2], chunks[1], chunks[0])).sealed()
    with pytest.raises(InvalidCiphertext, match="chunk 0 holds 1039 values, expected 2048"):
        aggregator(keys, updates).add(swapped, institution="north")


def test_update_replayed_from_another_round_or_run_is_rejected(keys, ctx, updates) -> None:
    old = encrypt_update(template(updates), num_examples=3, context=ctx, run_id=RUN, server_round=ROUND - 1)
    with pytest.raises(InvalidCiphertext, match=f"round {ROUND - 1}, this is run {RUN} round {ROUND} .replayed"):
        aggregator(keys, updates).add(old, institution="north")
    other_run = encrypt_update(template(updates), num_examples=3, context=ctx, run_id=RUN + 1, server_round=ROUND)
    with pytest.raises(InvalidCiphertext, match="replayed or stale"):
        aggregator(keys, updates).add(other_run, institution="north")


def test_same_institution_cannot_add_twice(keys, updates, bundles) -> None:
    agg = aggregator(keys, updates)
    agg.add(bundles["north"], institution="north")
    with pytest.raises(InvalidCiphertext, match="already contributed"):
        agg.add(bundles["east"], institution="north")
    assert agg.total_examples == COUNTS["north"]


def test_update_under_other_parameters_is_rejected(keys, updates) -> None:
    ctx8 = ts.context_from(make_keys(HEParams(8192, (60, 40), 40))[0])
    bundle = encrypt_update(template(updates), num_examples=3, context=ctx8, run_id=RUN, server_round=ROUND)
    with pytest.raises(InvalidCiphertext, match="chunks of 4096 slots, expected 3 of 2048"):
        aggregator(keys, updates).add(bundle, institution="north")
    # A header forged to look right does not help: SEAL refuses a ciphertext for other parameters.
    parts = [bundle.chunks[0]] * 3
    forged = replace(bundle, header=replace(bundle.header, slots=2048, num_chunks=3), chunks=tuple(parts)).sealed()
    with pytest.raises(InvalidCiphertext, match="chunk 0 does not deserialize under the federation's CKKS"):
        aggregator(keys, updates).add(forged, institution="north")


def test_update_under_another_key_is_rejected_by_key_id(keys, updates, bundles) -> None:
    foreign = ts.context_from(make_keys()[0])  # same parameters, other key: would deserialize and add fine
    bundle = encrypt_update(template(updates), num_examples=3, context=foreign, run_id=RUN, server_round=ROUND)
    expected = bundles["north"].header.key_id
    with pytest.raises(InvalidCiphertext, match="hospital has old or foreign HE keys"):
        aggregator(keys, updates, key_id=expected).add(bundle, institution="north")
    agg = aggregator(keys, updates)  # no key id given: the first accepted update sets it
    agg.add(bundles["north"], institution="north")
    with pytest.raises(InvalidCiphertext, match="old or foreign"):
        agg.add(bundle, institution="east")


def test_other_header_lies_are_rejected(keys, updates, bundles) -> None:
    b = bundles["north"]
    cases = [
        (reseal(b, num_examples=0), "header counts must all be positive"),
        (reseal(b, num_examples=2**40), "out of range"),
        (reseal(b, kind="sum"), "expected an encrypted update"),
        (reseal(b, contributors=2), "1 contributor"),
        (reseal(b, layout="0" * 16), "another model"),
    ]
    for bundle, match in cases:
        with pytest.raises(InvalidCiphertext, match=match):
            agg = aggregator(keys, updates, layout=b.header.layout)
            agg.add(EncryptedUpdate.from_bytes(bundle.to_bytes()), institution="north")


def test_oversized_chunk_is_refused_before_deserializing(keys, updates, bundles) -> None:
    b = bundles["north"]
    bloated = replace(b, chunks=(b.chunks[0] + bytes(200_000),) + b.chunks[1:]).sealed()
    with pytest.raises(InvalidCiphertext, match="chunk 0 is 265676 bytes"):
        aggregator(keys, updates).add(bloated, institution="north")


def test_empty_round_raises(keys, updates) -> None:
    with pytest.raises(EmptyAggregate, match="no valid encrypted update"):
        aggregator(keys, updates).result()


def test_garbage_chunk_is_rejected_and_sum_unchanged(keys, ctx, updates, bundles) -> None:
    """Random bytes of a plausible size, digest recomputed: only deserializing can catch them."""
    agg = aggregator(keys, updates)
    received = agg.add(bundles["east"], institution="east")
    assert received == bundles["east"].nbytes > sum(len(c) for c in bundles["east"].chunks)
    before = agg.result()[0]
    b = bundles["north"]
    garbage = replace(b, chunks=(np.random.default_rng(1).bytes(len(b.chunks[0])),) + b.chunks[1:]).sealed()
    with pytest.raises(InvalidCiphertext, match="chunk 0 does not deserialize"):
        agg.add(garbage, institution="north")
    assert agg.result()[0] == before and agg.accepted == ["east"]


def test_empty_round_is_also_a_value_error(keys, updates) -> None:
    with pytest.raises(ValueError):
        aggregator(keys, updates).result()
