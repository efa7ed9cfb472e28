"""Fuzzing the HE wire format: random or damaged bytes raise InvalidCiphertext, never another exception.

A bundle that still parses after damage must fail its digest check, unless the damage left it unchanged.
"""

from __future__ import annotations

import json

import pytest
import tenseal as ts
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.he.hospital import encrypt_update
from common.he.wire import (
    CHUNK_STYPE,
    CIPHERTEXTS_KEY,
    HEADER_KEY,
    EncryptedUpdate,
    HEHeader,
    InvalidCiphertext,
    put_bundle,
    take_bundle,
)
from tests.common.he.helpers import model
from tests.support.hostile import hostile_floats, hostile_ints, hostile_text, json_texts, json_values, mutated_bytes

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def bundle(ctx: ts.Context) -> EncryptedUpdate:
    return encrypt_update(model(), num_examples=7, context=ctx, run_id=2**63 + 5, server_round=3)


def _header_fields(bundle: EncryptedUpdate) -> dict:
    return json.loads(bundle.header.canonical())


@FUZZ
@given(data=st.data())
def test_damaged_or_random_files_raise_invalid_ciphertext(bundle: EncryptedUpdate, data: st.DataObject) -> None:
    blob = data.draw(st.one_of(mutated_bytes(bundle.to_bytes()), st.binary(max_size=300)))
    try:
        parsed = EncryptedUpdate.from_bytes(blob)
    except InvalidCiphertext:
        return
    if parsed != bundle:
        with pytest.raises(InvalidCiphertext):
            parsed.check_digest()


@st.composite
def file_heads(draw: st.DrawFn) -> bytes:
    """A well-framed file whose JSON head says anything: sizes, digest and header fields of any type."""
    head = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "header": st.one_of(
                    json_values(),
                    st.fixed_dictionaries({k: st.one_of(json_values(max_leaves=1), hostile_ints()) for k in HEAD_KEYS}),
                ),
                "digest": json_values(max_leaves=2),
                "chunk_sizes": st.one_of(json_values(), st.lists(st.one_of(hostile_ints(), hostile_floats()))),
            },
        )
    )
    text = draw(st.one_of(st.just(json.dumps(head)), json_texts())).encode("utf-8", "surrogatepass")
    return b"FCHE1\n" + len(text).to_bytes(8, "big") + text + draw(st.binary(max_size=40))


HEAD_KEYS = sorted(HEHeader.__dataclass_fields__)


@FUZZ
@given(blob=file_heads())
def test_any_file_head_raises_invalid_ciphertext_or_parses(blob: bytes) -> None:
    try:
        EncryptedUpdate.from_bytes(blob)
    except InvalidCiphertext:
        pass


@FUZZ
@given(data=st.data())
def test_any_header_text_raises_invalid_ciphertext_or_parses(bundle: EncryptedUpdate, data: st.DataObject) -> None:
    fields = _header_fields(bundle)
    changed = data.draw(
        st.dictionaries(st.sampled_from(HEAD_KEYS), st.one_of(json_values(max_leaves=2), hostile_ints()))
    )
    text = data.draw(
        st.one_of(
            st.just(json.dumps({**fields, **changed})),
            hostile_text(),
            json_texts(),
            mutated_bytes(bundle.header.canonical()).map(lambda b: b.decode("utf-8", "replace")),
        )
    )
    try:
        header = HEHeader.parse(text)
    except InvalidCiphertext:
        return
    assert header.kind in ("update", "sum") and min(header.num_values, header.num_chunks, header.slots) >= 1


@FUZZ
@given(data=st.data())
def test_any_flower_records_raise_invalid_ciphertext_or_parse(bundle: EncryptedUpdate, data: st.DataObject) -> None:
    content = RecordDict()
    put_bundle(content, bundle)
    meta = content[HEADER_KEY]
    for key in data.draw(st.lists(st.sampled_from(["header", "digest", "other"]), max_size=2)):
        meta[key] = data.draw(st.one_of(hostile_text(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans()))
    if data.draw(st.booleans()):
        arrays = content[CIPHERTEXTS_KEY]
        name = data.draw(st.sampled_from([*arrays.keys(), "c000009", "x"]))
        chunk = data.draw(st.binary(max_size=64))
        stype = data.draw(st.sampled_from([CHUNK_STYPE, "numpy.ndarray", ""]))
        arrays[name] = Array(dtype="uint8", shape=(len(chunk),), stype=stype, data=chunk)
    if data.draw(st.booleans()):
        swap = data.draw(st.sampled_from([CIPHERTEXTS_KEY, HEADER_KEY]))
        content[swap] = ConfigRecord({"x": 1}) if swap == CIPHERTEXTS_KEY else ArrayRecord()
    try:
        taken = take_bundle(content)
    except InvalidCiphertext:
        return
    if taken != bundle:
        with pytest.raises(InvalidCiphertext):
            taken.check_digest()


@pytest.mark.parametrize(
    "head",
    [b'{"header": {}, "digest": "", "chunk_sizes": [Infinity]}', b"[" * 100_000],
    ids=["infinite-chunk-size", "nested-too-deep"],
)
def test_file_heads_that_crashed_the_reader_raise_invalid_ciphertext(head: bytes) -> None:
    """Found by fuzzing: OverflowError (int(inf)) and RecursionError escaped EncryptedUpdate.from_bytes."""
    with pytest.raises(InvalidCiphertext, match="cannot read encrypted model file"):
        EncryptedUpdate.from_bytes(b"FCHE1\n" + len(head).to_bytes(8, "big") + head)


def test_a_header_nested_too_deep_is_invalid_ciphertext() -> None:
    with pytest.raises(InvalidCiphertext, match="header is malformed"):
        HEHeader.parse("[" * 100_000)
