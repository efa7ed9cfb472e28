"""The HE wire format: the header, the bundle of ciphertexts, its digest and the check slots.

Both sides parse it: a hospital writes updates and reads sums, the server reads updates and writes
sums. Nothing here needs a key, so this (with `params` and `keys`) is all the server imports.

The flattened update is followed by two check values ("canaries"), and every ciphertext ends with
one more check slot; they make failures loud instead of silently wrong:

- slot ``num_values``: the sample count. Decrypted, it must equal the total count the server
  reports, so a contribution under another key (which decrypts to noise), a wrapped-around sum or a
  total that does not match the ciphertexts summed is caught.
- slot ``num_values + 1``: ``num_examples * max|w| * 2**-20``, an upper bound on every slot of the
  sum. CKKS wraps values beyond its range around without an error; if the decrypted bound is within
  range, no slot can have wrapped.
- the last slot of every ciphertext: the sample count again, so a ciphertext altered after
  encryption (which a server without the key cannot notice when it still parses) decrypts wrong.

The digest is unkeyed (CKKS has no integrity either): it catches damage in transit or storage and a
header edited by accident, not a forger.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

FORMAT = "fedcare-he/1"
CIPHERTEXTS_KEY, HEADER_KEY = "he-ciphertexts", "he-header"  # RecordDict keys in a Flower message
# The bundles a message may carry in those two records: the model (update, or sum) and the hospitals' summed
# metrics beside it (common/site_metrics.py).
MODEL, METRICS = "model", "metrics"
PARTS = (MODEL, METRICS)
CHUNK_STYPE = "tenseal.ckks_vector"  # Array.stype of serialized CKKSVectors (never read with .numpy())
PACKED_ARRAY = "ciphertexts"  # the one Array of a bundle's record: its ciphertexts, one after the other
NUM_CANARIES = 2
RANGE_CANARY_SHIFT = 2.0**-20  # keeps the bound canary itself far from wrapping around


class InvalidCiphertext(ValueError):
    """An encrypted update or sum that cannot be used; the message says which part and why."""


@dataclass(frozen=True)
class HEHeader:
    """Clear-text facts bound to the ciphertexts by the digest."""

    kind: Literal["update", "sum"]
    run_id: int
    server_round: int
    key_id: str
    layout: str  # hash of the tensors' names, shapes and dtypes, in order
    num_values: int  # model values, without the canaries
    num_chunks: int
    slots: int  # values per chunk (the last one holds the rest)
    num_examples: int  # an update's sample count, or the sum's total
    contributors: int = 1
    format: str = FORMAT
    # A sum of FedNova per-step models (round-deadline, common/fednova_sum.py): τ_eff, the steps of the average
    # the hospitals take after decrypting; the server computes it from the clear sample counts and local steps.
    # None (and absent from the canonical form, so earlier files keep their digests): a plain FedAvg sum.
    effective_steps: float | None = None

    def canonical(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if not (k == "effective_steps" and v is None)}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, text: str) -> HEHeader:
        try:
            raw = json.loads(text)
            types = {
                "kind": str,
                "run_id": int,
                "server_round": int,
                "key_id": str,
                "layout": str,
                "num_values": int,
                "num_chunks": int,
                "slots": int,
                "num_examples": int,
                "contributors": int,
                "format": str,
            }
            steps = raw.pop("effective_steps", None) if isinstance(raw, dict) else None
            if set(raw) != set(types) or any(type(raw[k]) is not t for k, t in types.items()):
                raise ValueError(f"expected fields {sorted(types)} with types {[t.__name__ for t in types.values()]}")
            if steps is not None and (type(steps) not in (int, float) or not math.isfinite(steps) or steps < 1):
                raise ValueError(f"effective_steps {steps!r} is not a finite number >= 1")
            header = cls(**raw, effective_steps=None if steps is None else float(steps))
        except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep (fuzzing)
            raise InvalidCiphertext(f"header is malformed: {exc}") from exc
        if header.format != FORMAT:
            raise InvalidCiphertext(f"header format {header.format!r}, expected {FORMAT!r} (fedcare versions differ?)")
        if header.kind not in ("update", "sum"):
            raise InvalidCiphertext(f"header kind {header.kind!r} is neither 'update' nor 'sum'")
        if min(header.num_values, header.num_chunks, header.slots, header.num_examples, header.contributors) < 1:
            raise InvalidCiphertext("header counts must all be positive")
        if header.effective_steps is not None and header.kind != "sum":
            raise InvalidCiphertext("only the server's sum carries effective_steps (FedNova), not an update")
        return header


@dataclass(frozen=True)
class EncryptedUpdate:
    """Serialized CKKS chunks plus a header; `digest` = sha256(header, then each chunk's length and bytes)."""

    header: HEHeader
    chunks: tuple[bytes, ...]
    digest: str = field(default="")

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: ciphertexts, header and digest."""
        return sum(len(c) for c in self.chunks) + len(self.header.canonical()) + len(self.digest)

    def expected_digest(self) -> str:
        h = hashlib.sha256(self.header.canonical())
        for chunk in self.chunks:
            h.update(struct.pack(">Q", len(chunk)))
            h.update(chunk)
        return h.hexdigest()

    def sealed(self) -> EncryptedUpdate:
        return EncryptedUpdate(self.header, self.chunks, self.expected_digest())

    def check_digest(self) -> None:
        if self.digest != self.expected_digest():
            raise InvalidCiphertext(
                "digest does not match header and ciphertexts: bytes were changed or lost in transit or storage"
            )

    def to_bytes(self) -> bytes:
        """One file, e.g. the encrypted final model a hospital decrypts with `fedcare he decrypt`."""
        head = json.dumps(
            {
                "header": json.loads(self.header.canonical()),
                "digest": self.digest,
                "chunk_sizes": [len(c) for c in self.chunks],
            }
        ).encode()
        return b"FCHE1\n" + struct.pack(">Q", len(head)) + head + b"".join(self.chunks)

    @classmethod
    def from_bytes(cls, blob: bytes) -> EncryptedUpdate:
        try:
            if not blob.startswith(b"FCHE1\n"):
                raise ValueError("not a fedcare HE file (bad magic)")
            (n,) = struct.unpack(">Q", blob[6:14])
            head = json.loads(blob[14 : 14 + n])
            sizes, pos, chunks = [int(s) for s in head["chunk_sizes"]], 14 + n, []
            for size in sizes:
                chunks.append(blob[pos : pos + size])
                pos += size
            if pos != len(blob) or any(len(c) != s for c, s in zip(chunks, sizes, strict=False)):
                raise ValueError("file is truncated or has trailing bytes")
            header_text, digest = json.dumps(head["header"]), str(head["digest"])
        except (ValueError, KeyError, TypeError, struct.error, OverflowError, RecursionError) as exc:
            # OverflowError: a chunk size of Infinity; RecursionError: a head nested too deep (both found by fuzzing)
            raise InvalidCiphertext(f"cannot read encrypted model file: {exc}") from exc
        return cls(HEHeader.parse(header_text), tuple(chunks), digest)


def _entry(part: str, name: str) -> str:
    """A part's entry in the header record: the model's under plain names, the metrics' prefixed."""
    return name if part == MODEL else f"{part}-{name}"


def has_bundle(content: RecordDict, *, part: str = MODEL) -> bool:
    """Whether the message carries this part (its header entry is there; `take_bundle` checks the rest)."""
    meta = content.get(HEADER_KEY)
    return isinstance(meta, ConfigRecord) and _entry(part, "header") in meta


def put_bundle(content: RecordDict, bundle: EncryptedUpdate, *, part: str = MODEL) -> None:
    """Store a bundle in a Flower message as `part` (MODEL, or METRICS for the metrics beside it).

    Every part of a message shares two records: one ArrayRecord holding one uint8 Array (PACKED_ARRAY) with all
    their ciphertexts one after the other, and one ConfigRecord with each part's header (JSON text, so 64-bit
    run ids need no int64 care), digest, byte offset into the Array and ciphertext sizes. Putting a part that is
    already there replaces it.

    Why one Array: each Array is two Flower objects (itself and a chunk of at most 5 MB), each record one more,
    and every object is one request at every hop (ServerApp, SuperLink, SuperNode, ClientApp), about 10 ms of the
    SuperLink's GIL each. With an Array per ciphertext and records per part, a breast-cancer HE train message
    carried 15 objects and its reply 16-17 (plain mode: 6 and 8); now 7 and 8-9."""
    meta = content.get(HEADER_KEY)
    meta = ConfigRecord() if not isinstance(meta, ConfigRecord) else meta
    arrays = content.get(CIPHERTEXTS_KEY)
    data = bytes(arrays[PACKED_ARRAY].data) if isinstance(arrays, ArrayRecord) and PACKED_ARRAY in arrays else b""
    if has_bundle(content, part=part):  # cut the old bytes out; the parts after it move down
        start, size = int(meta[_entry(part, "offset")]), sum(meta[_entry(part, "chunk-sizes")])  # type: ignore[arg-type]
        data = data[:start] + data[start + size :]
        for other in PARTS:
            if other != part and has_bundle(content, part=other) and int(meta[_entry(other, "offset")]) > start:
                meta[_entry(other, "offset")] = int(meta[_entry(other, "offset")]) - size
    meta[_entry(part, "header")] = bundle.header.canonical().decode()
    meta[_entry(part, "digest")] = bundle.digest
    meta[_entry(part, "offset")] = len(data)
    meta[_entry(part, "chunk-sizes")] = [len(c) for c in bundle.chunks]
    data += b"".join(bundle.chunks)
    packed = Array(dtype="uint8", shape=(len(data),), stype=CHUNK_STYPE, data=data)
    content[CIPHERTEXTS_KEY] = ArrayRecord(OrderedDict([(PACKED_ARRAY, packed)]))
    content[HEADER_KEY] = meta


def take_bundle(content: RecordDict, *, part: str = MODEL) -> EncryptedUpdate:
    """Read a bundle from a Flower message; raises InvalidCiphertext if it is missing or malformed."""
    if CIPHERTEXTS_KEY not in content or HEADER_KEY not in content:
        raise InvalidCiphertext(
            f"message has no encrypted update ({part}: records {CIPHERTEXTS_KEY!r} and {HEADER_KEY!r})"
        )
    arrays, meta = content[CIPHERTEXTS_KEY], content[HEADER_KEY]
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise InvalidCiphertext("encrypted update records have the wrong record types")
    if _entry(part, "header") not in meta:
        raise InvalidCiphertext(f"message has no encrypted update ({part}: no {_entry(part, 'header')!r} entry)")
    header = HEHeader.parse(str(meta.get(_entry(part, "header"), "")))
    if list(arrays.keys()) != [PACKED_ARRAY]:
        raise InvalidCiphertext(f"expected one array {PACKED_ARRAY!r} of ciphertexts, got {list(arrays.keys())[:3]}")
    arr = arrays[PACKED_ARRAY]
    if arr.stype != CHUNK_STYPE:
        raise InvalidCiphertext(f"ciphertexts have stype {arr.stype!r}, expected {CHUNK_STYPE!r}")
    sizes, offset, data = meta.get(_entry(part, "chunk-sizes")), meta.get(_entry(part, "offset")), bytes(arr.data)
    if (
        type(offset) is not int
        or not isinstance(sizes, list)
        or not sizes
        or any(type(n) is not int or n < 1 for n in sizes)
        or not 0 <= offset <= offset + sum(sizes) <= len(data)
    ):
        raise InvalidCiphertext(
            f"{part}: offset {str(offset)[:20]} and chunk-sizes {str(sizes)[:60]} do not fit the {len(data)} "
            "ciphertext bytes"
        )
    chunks, pos = [], offset
    for n in sizes:
        chunks.append(data[pos : pos + n])
        pos += n
    return EncryptedUpdate(header, tuple(chunks), str(meta.get(_entry(part, "digest"), "")))


def layout_id(weights: OrderedDict[str, np.ndarray] | dict[str, np.ndarray]) -> str:
    """Names, shapes and dtypes in order: two sites flattening different models cannot be mixed up."""
    desc = [[name, list(np.shape(w)), str(np.asarray(w).dtype)] for name, w in weights.items()]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def num_chunks_for(num_values: int, slots: int) -> int:
    return math.ceil((num_values + NUM_CANARIES) / (slots - 1))


def chunk_lengths(num_values: int, slots: int) -> list[int]:
    """Values in each ciphertext: up to slots-1 of the update (and canaries), then the check slot."""
    total, per = num_values + NUM_CANARIES, slots - 1
    return [min(per, total - i * per) + 1 for i in range(num_chunks_for(num_values, slots))]


def flatten(weights: OrderedDict[str, np.ndarray] | dict[str, np.ndarray]) -> np.ndarray:
    """All tensors as one float64 vector in key order: the order `unflatten` and `layout_id` assume."""
    if not weights:
        raise ValueError("no tensors to flatten")
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights.values()])


def unflatten(flat: np.ndarray, *, template: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """Split a flat float64 vector into `template`'s shapes and dtypes (integers are rounded)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    pos = 0
    for name, ref in template.items():
        ref = np.asarray(ref)
        part = flat[pos : pos + ref.size].reshape(ref.shape)
        out[name] = (np.rint(part) if np.issubdtype(ref.dtype, np.integer) else part).astype(ref.dtype)
        pos += ref.size
    if pos != flat.size:
        raise InvalidCiphertext(f"{flat.size} values do not fit the model's {pos}")
    return out
