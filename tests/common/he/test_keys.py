"""The key set: the server's context holds no key, the files' layout and modes, and each side's loader
refusing the other side's context."""

from __future__ import annotations

import json
import stat

import pytest
import tenseal as ts

from common.he.keys import (
    HEKeyError,
    key_id,
    load_hospital_context,
    load_public_context,
    load_secret_context,
    load_server_context,
    make_keys,
    write_keys,
)
from common.he.params import HEParams


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
    secret, server = make_keys()
    assert load_hospital_context(secret).has_secret_key()
    assert not load_public_context(server).has_secret_key()
    with pytest.raises(HEKeyError, match="the server must only get the public context"):
        load_public_context(secret)
    with pytest.raises(HEKeyError, match="holds no secret key"):
        load_hospital_context(server)
    with pytest.raises(HEKeyError, match="not a TenSEAL context"):
        load_public_context(b"\x00garbage" * 10)
