"""A hospital's encryption and decryption, with real TenSEAL ciphertexts summed by the real server aggregator."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts

from common.he.hospital import decrypt_sum, encrypt_update
from common.he.keys import make_keys
from common.he.params import HEConfigError
from common.he.wire import EncryptedUpdate, InvalidCiphertext
from server.he_aggregate import HEAggregator
from tests.common.he.helpers import model, size


def test_encrypt_refuses_bad_input(ctx: ts.Context) -> None:
    bad = model()
    bad["b1"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encrypt_update(bad, num_examples=3, context=ctx, run_id=1, server_round=1)
    with pytest.raises(ValueError, match="positive integer"):
        encrypt_update(model(), num_examples=0, context=ctx, run_id=1, server_round=1)
    with pytest.raises(HEConfigError, match="exceeds what these CKKS parameters hold"):
        encrypt_update(model(scale=1000.0), num_examples=1000, context=ctx, run_id=1, server_round=1)


def _sum_of(bundles: list[EncryptedUpdate], server: bytes) -> EncryptedUpdate:
    agg = HEAggregator(server, expected_values=bundles[0].header.num_values, run_id=1, server_round=1)
    for i, b in enumerate(bundles):
        agg.add(b, institution=f"h{i}")
    return agg.result()[0]


def test_decrypt_checks_what_it_is_given(keys: tuple[bytes, bytes], ctx: ts.Context) -> None:
    update = encrypt_update(model(), num_examples=4, context=ctx, run_id=1, server_round=1)
    total = _sum_of([update], keys[1])
    out = decrypt_sum(total, context=ctx, template=model(), run_id=1, server_round=1)
    assert max(np.abs(out[k] - model()[k]).max() for k in out) < 1e-6
    with pytest.raises(InvalidCiphertext, match="expected the server's encrypted sum"):
        decrypt_sum(update, context=ctx, template=model())
    with pytest.raises(InvalidCiphertext, match="run 1 round 1, expected run 1 round 2"):
        decrypt_sum(total, context=ctx, template=model(), run_id=1, server_round=2)
    with pytest.raises(InvalidCiphertext, match="differs from the sum's header"):
        decrypt_sum(total, context=ctx, template=model(), total_examples=5)
    other = OrderedDict(model())
    other["w2"] = np.zeros((2, 64), np.float32)  # same size, other shape
    with pytest.raises(InvalidCiphertext, match="another model"):
        decrypt_sum(total, context=ctx, template=other)
    with pytest.raises(InvalidCiphertext, match="key set"):
        decrypt_sum(total, context=ts.context_from(make_keys()[0]), template=model())
    with pytest.raises(InvalidCiphertext, match="digest"):
        decrypt_sum(replace(total, chunks=total.chunks[::-1]), context=ctx, template=model())


def test_contribution_under_a_foreign_key_is_caught_after_decryption(
    keys: tuple[bytes, bytes], ctx: ts.Context
) -> None:
    """Same parameters, other key, key id forged: the server cannot tell (CKKS has no integrity);
    the count canary makes the hospitals' decryption fail instead of returning noise."""
    foreign = ts.context_from(make_keys()[0])
    honest = encrypt_update(model(1), num_examples=10, context=ctx, run_id=1, server_round=1)
    rogue = encrypt_update(model(2), num_examples=10, context=foreign, run_id=1, server_round=1)
    rogue = replace(rogue, header=replace(rogue.header, key_id=honest.header.key_id)).sealed()
    total = _sum_of([honest, rogue], keys[1])
    with pytest.raises(InvalidCiphertext, match="another key"):
        decrypt_sum(total, context=ctx, template=model())


def test_sum_that_could_wrap_around_is_refused(keys: tuple[bytes, bytes], ctx: ts.Context) -> None:
    """Each update fits (2e5 < 2**18) but their sum might not: CKKS would wrap silently; we refuse."""
    big = OrderedDict(w=np.full(10, 2000.0, np.float32))
    bundles = [encrypt_update(big, num_examples=100, context=ctx, run_id=1, server_round=1) for _ in range(3)]
    with pytest.raises(HEConfigError, match="may have wrapped around"):
        decrypt_sum(_sum_of(bundles, keys[1]), context=ctx, template=big)


def test_integer_tensors_are_rounded_back(keys: tuple[bytes, bytes], ctx: ts.Context) -> None:
    weights = OrderedDict(w=np.array([0.5, -1.25], np.float64), steps=np.array([7, 7], np.int64))
    total = _sum_of([encrypt_update(weights, num_examples=3, context=ctx, run_id=1, server_round=1)], keys[1])
    out = decrypt_sum(total, context=ctx, template=weights)
    assert out["steps"].dtype == np.int64 and out["steps"].tolist() == [7, 7]
    assert np.allclose(out["w"], [0.5, -1.25], atol=1e-8)


def test_a_ciphertext_altered_after_encryption_is_caught_when_the_sum_is_decrypted(ctx: ts.Context, keys) -> None:
    """A flipped byte often still parses (the server, holding no key, cannot tell); every chunk's check
    slot then decrypts wrong, so the hospitals refuse that model instead of training on garbage."""
    weights = model()
    bundle = encrypt_update(weights, num_examples=10, context=ctx, run_id=1, server_round=1)
    caught = parsed = 0
    for pos in range(200, len(bundle.chunks[1]), 97):
        damaged = bytearray(bundle.chunks[1])
        damaged[pos] ^= 0xFF
        agg = HEAggregator(keys[1], expected_values=size(weights), run_id=1, server_round=1)
        try:
            agg.add(replace(bundle, chunks=(bundle.chunks[0], bytes(damaged))).sealed(), institution="x")
        except InvalidCiphertext:
            continue  # refused by the server already
        parsed += 1
        with pytest.raises(InvalidCiphertext, match="chunk 1 of the sum fails its check value|beyond the"):
            decrypt_sum(agg.result()[0], context=ctx, template=weights)
        caught += 1
    assert parsed > 10 and caught == parsed
