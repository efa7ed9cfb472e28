"""CKKS parameters, keys, encrypted bundles and the hospitals' decryption, with real TenSEAL ciphertexts."""

from __future__ import annotations

import json
import stat
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from common.he import (
    HEADER_KEY,
    EncryptedUpdate,
    HEConfigError,
    HEKeyError,
    HEParams,
    InvalidCiphertext,
    decrypt_sum,
    encrypt_update,
    flatten,
    key_id,
    layout_id,
    load_hospital_context,
    load_public_context,
    load_secret_context,
    load_server_context,
    make_contexts,
    make_keys,
    put_bundle,
    take_bundle,
    unflatten,
    validate_params,
    write_keys,
)
from server.he_aggregate import HEAggregator

RUN, ROUND = 2**63 + 5, 3  # Flower run ids are unsigned 64-bit


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_keys()


@pytest.fixture(scope="module")
def ctx(keys: tuple[bytes, bytes]) -> ts.Context:
    return ts.context_from(keys[0])


def model(seed: int = 0, scale: float = 1.0) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        [
            ("w1", (rng.normal(size=(30, 64)) * scale).astype(np.float32)),
            ("b1", rng.normal(size=64).astype(np.float32)),
            ("w2", (rng.normal(size=(64, 2)) * scale).astype(np.float32)),
        ]
    )


def size(weights: OrderedDict[str, np.ndarray]) -> int:
    return sum(w.size for w in weights.values())


# ---- parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        HEParams(),
        HEParams(4096, (60, 41), 40),
        HEParams(4096, (60, 49), 40),
        HEParams(8192, (60, 40, 40, 60), 40),
        HEParams(16384, (60, 60, 60, 60), 40),
    ],
)
def test_secure_params_pass(params: HEParams) -> None:
    assert validate_params(params) is params


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (HEParams(2048, (30, 24), 30), "not supported"),
        (HEParams(5000, (60, 40), 40), "not supported"),
        (HEParams(4096, (60,), 40), "at least 2"),
        (HEParams(4096, (61, 40), 40), "20 to 60 bits"),
        (HEParams(4096, (60, 50), 40), "110 bits, above the 109"),
        (HEParams(8192, (60, 60, 60, 40), 40), "220 bits, above the 218"),
        (HEParams(4096, (60, 40), 25), "below 30"),
        (HEParams(4096, (45, 40), 40), "leaves 5 bits"),
    ],
)
def test_insecure_or_unusable_params_are_refused(params: HEParams, match: str) -> None:
    with pytest.raises(HEConfigError, match=match):
        validate_params(params)
    with pytest.raises(HEConfigError):
        make_keys(params)


def test_default_range_is_documented_value() -> None:
    assert HEParams().max_abs_value == 2.0**18  # 60-bit data prime, 2**40 scale, one bit of margin


# ---- keys --------------------------------------------------------------------------------


def test_server_context_has_no_key_and_cannot_decrypt(keys: tuple[bytes, bytes], ctx: ts.Context) -> None:
    secret, server = keys
    server_ctx = ts.context_from(server)
    assert not server_ctx.has_secret_key() and server_ctx.is_public()
    assert not server_ctx.has_relin_keys() and not server_ctx.has_galois_keys()
    assert len(server) < 200  # parameters only
    assert ctx.has_secret_key()
    blob = ts.ckks_vector(ctx, [1.0, 2.0, 3.0]).serialize()
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(server_ctx, blob).decrypt()


def test_write_keys_layout_modes_and_overwrite(tmp_path) -> None:
    files = write_keys(tmp_path / "he")
    assert stat.S_IMODE(files.hospital_context.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.hospital_context.parent.stat().st_mode) == 0o700
    meta = json.loads(files.server_params.read_text())
    assert meta["params"] == {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 40], "global_scale_bits": 40}
    assert meta["key_id"] == files.key_id == key_id(load_secret_context(files.hospital_context))
    server = load_server_context(files.server_context)
    assert server.key_id == files.key_id and server.params == HEParams()
    with pytest.raises(HEKeyError, match="already exist"):
        write_keys(tmp_path / "he")
    assert write_keys(tmp_path / "he", overwrite=True).key_id != files.key_id


def test_server_loader_refuses_the_hospital_context(tmp_path) -> None:
    files = write_keys(tmp_path)
    hospital_copy = files.server_context.parent / "he-secret.ctx"
    hospital_copy.write_bytes(files.hospital_context.read_bytes())
    with pytest.raises(HEKeyError, match="SECRET key; the server must only get the public context"):
        load_server_context(hospital_copy)
    with pytest.raises(HEKeyError, match="holds no secret key"):
        load_secret_context(files.server_context)
    files.server_params.unlink()
    with pytest.raises(HEKeyError, match="he-params.json is missing"):
        load_server_context(files.server_context)
    with pytest.raises(HEKeyError, match="not found"):
        load_secret_context(tmp_path / "nope.ctx")


def test_context_bytes_loaders_keep_the_secret_key_where_it_belongs() -> None:
    secret, server = make_contexts()
    assert load_hospital_context(secret).has_secret_key()
    assert not load_public_context(server).has_secret_key()
    with pytest.raises(HEKeyError, match="the server must only get the public context"):
        load_public_context(secret)
    with pytest.raises(HEKeyError, match="holds no secret key"):
        load_hospital_context(server)
    with pytest.raises(HEKeyError, match="not a TenSEAL context"):
        load_public_context(b"\x00garbage" * 10)


# ---- encrypting, carrying, decrypting -------------------------------------------------------------


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


def test_bundle_file_round_trip_and_truncation(ctx: ts.Context) -> None:
    bundle = encrypt_update(model(), num_examples=5, context=ctx, run_id=1, server_round=1)
    blob = bundle.to_bytes()
    assert EncryptedUpdate.from_bytes(blob) == bundle
    with pytest.raises(InvalidCiphertext, match="truncated"):
        EncryptedUpdate.from_bytes(blob[:-10])


def test_take_bundle_reports_missing_or_malformed_records(ctx: ts.Context) -> None:
    with pytest.raises(InvalidCiphertext, match="no encrypted update"):
        take_bundle(RecordDict())
    content = RecordDict()
    put_bundle(content, encrypt_update(model(), num_examples=5, context=ctx, run_id=1, server_round=1))
    content[HEADER_KEY]["header"] = '{"kind": "update"}'
    with pytest.raises(InvalidCiphertext, match="header is malformed"):
        take_bundle(content)


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


def test_layout_id_depends_on_names_shapes_dtypes() -> None:
    base = model()
    assert layout_id(base) == layout_id(model(5))
    renamed = OrderedDict(("x" + k, v) for k, v in base.items())
    as64 = OrderedDict((k, v.astype(np.float64)) for k, v in base.items())
    assert len({layout_id(base), layout_id(renamed), layout_id(as64)}) == 3


# ---- the command line ---------------------------------------------------------------------


def test_keygen_and_decrypt_commands(tmp_path) -> None:
    """keygen never prints key material; decrypt turns the server's encrypted model file into a state dict."""
    import torch
    from typer.testing import CliRunner

    from common.models import build_model
    from common.schema import DatasetSchema, FeatureSpec, save_schema
    from fedcare.he_cli import he_app

    runner = CliRunner()
    result = runner.invoke(he_app, ["keygen", "--out", str(tmp_path / "he")])
    assert result.exit_code == 0, result.output
    secret = (tmp_path / "he" / "hospital" / "he-secret.ctx").read_bytes()
    assert "key id" in result.output and secret.hex()[:64] not in result.output
    refused = runner.invoke(he_app, ["keygen", "--out", str(tmp_path / "x"), "--coeff-mod-bit-sizes", "60,50"])
    assert refused.exit_code == 2 and not (tmp_path / "x" / "hospital").exists()

    schema = DatasetSchema(label="y", num_classes=2, features=[FeatureSpec(name=f"f{i}") for i in range(4)])
    save_schema(schema, tmp_path / "schema.json")
    weights = OrderedDict((k, v.detach().numpy()) for k, v in build_model(schema, seed=3).state_dict().items())
    ctx = load_secret_context(tmp_path / "he" / "hospital" / "he-secret.ctx")
    server = load_server_context(tmp_path / "he" / "server" / "he-public.ctx")
    agg = HEAggregator(
        server.context_bytes, expected_values=size(weights), run_id=9, server_round=4, key_id=server.key_id
    )
    agg.add(encrypt_update(weights, num_examples=11, context=ctx, run_id=9, server_round=4), institution="h1")
    (tmp_path / "final_model.he").write_bytes(agg.result()[0].to_bytes())
    result = runner.invoke(
        he_app,
        [
            "decrypt",
            "--context",
            str(tmp_path / "he" / "hospital" / "he-secret.ctx"),
            "--encrypted",
            str(tmp_path / "final_model.he"),
            "--schema",
            str(tmp_path / "schema.json"),
            "--out",
            str(tmp_path / "final_model.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "final_model.pt")
    assert max(float(np.abs(state[k].numpy() - weights[k]).max()) for k in weights) < 1e-6
    wrong = runner.invoke(
        he_app,
        [
            "decrypt",
            "--context",
            str(tmp_path / "he" / "server" / "he-public.ctx"),
            "--encrypted",
            str(tmp_path / "final_model.he"),
            "--schema",
            str(tmp_path / "schema.json"),
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert wrong.exit_code == 1 and "holds no secret key" in wrong.output


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
