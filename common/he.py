"""CKKS (TenSEAL) for fedcare's HE mode: parameters, keys, encrypted updates, the decrypted sum.

Who holds what (docs/he.md has the threat model):

- Every hospital holds the same *secret* context. It encrypts (symmetric CKKS: half the time of
  public-key encryption, less noise, and no public key that could be misused) and decrypts.
- The server holds a context with the parameters only: no secret, public, relinearisation or
  Galois key. Adding ciphertexts needs nothing more, so the server gets nothing more (89 bytes).

A hospital flattens its update in key order, multiplies it by its sample count, appends two
check values ("canaries") and encrypts it in chunks of one ciphertext each. The server adds the
chunks of all hospitals; a hospital decrypts the sum, checks the canaries and divides by the total
count. The canaries make failures loud instead of silently wrong:

- slot ``num_values``: the sample count. Decrypted, it must equal the total count the server
  reports, so a contribution under another key (which decrypts to noise), a wrapped-around sum or a
  total that does not match the ciphertexts summed is caught.
- slot ``num_values + 1``: ``num_examples * max|w| * 2**-20``, an upper bound on every slot of the
  sum. CKKS wraps values beyond its range around without an error; if the decrypted bound is within
  range, no slot can have wrapped.

CKKS has no integrity: anyone can make a ciphertext that decrypts to a value of their choice, and
the header digest below is unkeyed. The digest catches bytes damaged in transit or storage and a
header edited by accident; authenticity of a hospital's message comes from Flower's TLS and
SuperNode authentication, not from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tenseal as ts
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from common.atomic import write_bytes_atomic, write_json_atomic
from common.private_files import write_private

log = logging.getLogger(__name__)

FORMAT = "fedcare-he/1"
HOSPITAL_CONTEXT_FILE = "he-secret.ctx"
SERVER_CONTEXT_FILE = "he-public.ctx"
PARAMS_FILE = "he-params.json"
CIPHERTEXTS_KEY, HEADER_KEY = "he-ciphertexts", "he-header"  # RecordDict keys in a Flower message
CHUNK_STYPE = "tenseal.ckks_vector"  # Array.stype of a serialized CKKSVector (never read with .numpy())
NUM_CANARIES = 2
CHECK_TOLERANCE = 1e-3  # CKKS error here is about 1e-8 per value; a check slot off by more was altered
RANGE_CANARY_SHIFT = 2.0**-20  # keeps the bound canary itself far from wrapping around

# Largest total coefficient modulus (bits) that keeps RLWE at 128-bit classical security, per
# polynomial degree (HomomorphicEncryption.org standard, ternary secret; SEAL's MaxBitCount).
SECURITY_BOUND_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SUPPORTED_DEGREES = (4096, 8192, 16384, 32768)  # 1024 and 2048 leave no room for a useful scale
MIN_PRIME_BITS, MAX_PRIME_BITS = 20, 60  # SEAL's primes are at most 60 bits; NTT needs > log2(2N)
MIN_SCALE_BITS = 30  # sum error grows as 2**-scale_bits: about 1e-6 at 2**30, 1e-9 at 2**40
MIN_HEADROOM_BITS = 10  # data bits - scale bits: what is left for the integer part of the sum


class HEConfigError(ValueError):
    """CKKS parameters that are insecure, unsupported or too small for the values to encrypt."""


class HEKeyError(ValueError):
    """A key file in the wrong place: a secret key where only the public context belongs, or none."""


class InvalidCiphertext(ValueError):
    """An encrypted update or sum that cannot be used; the message says which part and why."""


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class HEParams:
    """CKKS parameters. The defaults are 128-bit secure for a sum-only server and expand float32 8x.

    With no multiplication there is no rescaling, so the usual rule "intermediate primes equal the
    scale" does not apply. What matters is that the *data level* (every prime but the last, which
    SEAL keeps as the special key-switching prime) leaves room above the scale for the sum.
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    global_scale_bits: int = 40

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(int(b) for b in self.coeff_mod_bit_sizes))

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs_value(self) -> float:
        """Largest |value| a ciphertext, or a sum of them, holds without wrapping (one bit of margin)."""
        return _max_abs_value(self.data_bits, self.global_scale_bits)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes)}


def _max_abs_value(data_bits: int, scale_bits: float) -> float:
    return 2.0 ** (data_bits - scale_bits - 2)


def validate_params(params: HEParams) -> HEParams:
    """Return `params` if they are safe to use, else raise HEConfigError saying what to change."""
    degree, primes, scale = params.poly_modulus_degree, params.coeff_mod_bit_sizes, params.global_scale_bits
    if degree not in SUPPORTED_DEGREES:
        raise HEConfigError(
            f"poly_modulus_degree {degree} is not supported: use one of {', '.join(map(str, SUPPORTED_DEGREES))} "
            "(1024 and 2048 allow at most 27 and 54 modulus bits at 128-bit security, too few for a 2-prime "
            "chain with a useful scale)"
        )
    if len(primes) < 2:
        raise HEConfigError(
            f"coeff_mod_bit_sizes {list(primes)} has {len(primes)} prime(s); TenSEAL needs at least 2 "
            "(the last is SEAL's special prime), e.g. [60, 40]"
        )
    if any(not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in primes):
        raise HEConfigError(
            f"coeff_mod_bit_sizes {list(primes)}: every prime must be {MIN_PRIME_BITS} to {MAX_PRIME_BITS} bits"
        )
    bound = SECURITY_BOUND_BITS[degree]
    if sum(primes) > bound:
        raise HEConfigError(
            f"coeff_mod_bit_sizes {list(primes)} total {sum(primes)} bits, above the {bound} bits that keep "
            f"degree {degree} 128-bit secure: drop or shrink primes, or double poly_modulus_degree"
        )
    if scale < MIN_SCALE_BITS:
        raise HEConfigError(
            f"global_scale_bits {scale} is below {MIN_SCALE_BITS}: CKKS' error grows as 2**-scale and the "
            "averaged model would lose precision"
        )
    headroom = params.data_bits - scale
    if headroom < MIN_HEADROOM_BITS:
        raise HEConfigError(
            f"scale 2**{scale} leaves {headroom} bits below the data modulus ({params.data_bits} bits: every "
            f"prime but the last); at least {MIN_HEADROOM_BITS} are needed so sums of weighted updates do not "
            f"wrap around. Lower global_scale_bits or use a larger first prime"
        )
    return params


def params_from_dict(raw: dict[str, Any]) -> HEParams:
    try:
        return validate_params(
            HEParams(
                poly_modulus_degree=int(raw["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(int(b) for b in raw["coeff_mod_bit_sizes"]),
                global_scale_bits=int(raw["global_scale_bits"]),
            )
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, HEConfigError):
            raise
        raise HEConfigError(f"HE parameters {raw!r} are malformed ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# Keys


def make_keys(params: HEParams | None = None) -> tuple[bytes, bytes]:
    """(hospitals' secret context, server's context) as TenSEAL bytes.

    The server's context carries the parameters only: deserializing and adding ciphertexts needs no
    key, and a key the server does not have cannot leak from it. No Galois keys are made (no
    rotations), and the relinearisation keys TenSEAL makes by default are not saved (no products).
    """
    params = validate_params(params or HEParams())
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
            n_threads=1,
        )
    except ValueError as exc:  # e.g. SEAL found no primes of that size for this degree
        raise HEConfigError(f"TenSEAL refused {params.to_dict()}: {exc}") from exc
    ctx.global_scale = 2.0**params.global_scale_bits
    secret = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    server = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return secret, server


def make_contexts(params: HEParams | None = None) -> tuple[bytes, bytes]:
    """(hospital secret context, server context) bytes: the name the HE-mode brief uses for `make_keys`."""
    return make_keys(params)


def load_hospital_context(data: bytes) -> ts.Context:
    """A hospital's context from bytes (e.g. a Flower message or a secrets store); it must hold the secret key."""
    ctx = _context_from_bytes(data, what="hospital HE context")
    if not ctx.has_secret_key():
        raise HEKeyError(
            "the hospital HE context holds no secret key: hospitals need hospital/"
            f"{HOSPITAL_CONTEXT_FILE} from `fedcare he keygen`, not the server's context"
        )
    return ctx


def load_public_context(data: bytes) -> ts.Context:
    """The server's context from bytes; refuses one with a secret key, which would let the server decrypt."""
    ctx = _context_from_bytes(data, what="server HE context")
    if ctx.has_secret_key():
        raise HEKeyError(
            "the server's HE context holds a secret key; the server must only get the public "
            f"context (server/{SERVER_CONTEXT_FILE} from `fedcare he keygen`)"
        )
    return ctx


def _context_from_bytes(data: bytes, *, what: str) -> ts.Context:
    try:
        return ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++
        raise HEKeyError(f"{what} is not a TenSEAL context ({len(data)} bytes): {exc}") from exc


def key_id(context: ts.Context) -> str:
    """A public name for the hospitals' key set, so a hospital with another key is caught by name.

    It hashes the secret-key serialization under a domain tag: one-way, and the key has thousands of
    bits of entropy, so the name reveals nothing about the key.
    """
    if not context.has_secret_key():
        raise HEKeyError("a key id is derived from the hospitals' secret context; this context has no secret key")
    material = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(b"fedcare-he-key-id/1\0" + material).hexdigest()[:32]


@dataclass(frozen=True)
class KeyFiles:
    hospital_context: Path
    hospital_params: Path
    server_context: Path
    server_params: Path
    key_id: str

    @classmethod
    def at(cls, out_dir: Path, *, key_id: str = "") -> KeyFiles:
        """Where `write_keys(out_dir)` puts each file: hospital/ for the hospitals, server/ for the server."""
        out_dir = Path(out_dir)
        return cls(
            hospital_context=out_dir / "hospital" / HOSPITAL_CONTEXT_FILE,
            hospital_params=out_dir / "hospital" / PARAMS_FILE,
            server_context=out_dir / "server" / SERVER_CONTEXT_FILE,
            server_params=out_dir / "server" / PARAMS_FILE,
            key_id=key_id,
        )


def existing_keys(out_dir: Path) -> KeyFiles | None:
    """The key files `write_keys(out_dir)` made earlier, with their key id; None if there are none."""
    files = KeyFiles.at(out_dir)
    if not (files.hospital_context.exists() and files.server_params.exists()):
        return None
    return KeyFiles.at(out_dir, key_id=str(json.loads(files.server_params.read_text())["key_id"]))


def write_keys(out_dir: Path, params: HEParams | None = None, *, overwrite: bool = False) -> KeyFiles:
    """Write the federation's HE material: `hospital/` goes to every hospital, `server/` to the server only.

    Existing files are kept unless `overwrite`: new keys make every earlier encrypted model unreadable.
    """
    params = validate_params(params or HEParams())
    out_dir = Path(out_dir)
    files = KeyFiles.at(out_dir)
    existing = [p for p in (files.hospital_context, files.server_context) if p.exists()]
    if existing and not overwrite:
        raise HEKeyError(
            f"{', '.join(map(str, existing))} already exist; new keys would make models encrypted "
            "under the old ones unreadable (`fedcare he keygen --force` replaces them)"
        )
    secret, server = make_keys(params)
    kid = key_id(ts.context_from(secret))
    (out_dir / "hospital").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out_dir / "hospital", 0o700)
    write_private(files.hospital_context, secret)  # the federation's secret key: 0600 from the first byte
    write_bytes_atomic(files.server_context, server)
    os.chmod(files.server_context, 0o644)
    meta = {"format": FORMAT, "params": params.to_dict(), "key_id": kid}
    write_json_atomic(files.hospital_params, meta)
    write_json_atomic(files.server_params, {**meta, "server_context_sha256": hashlib.sha256(server).hexdigest()})
    for public in (files.hospital_params, files.server_params):
        os.chmod(public, 0o644)
    return KeyFiles.at(out_dir, key_id=kid)


def load_secret_context(path: Path) -> ts.Context:
    """The hospitals' context, with its secret key; refuses a file that holds none."""
    path = Path(path)
    ctx = _read_context(path)
    if not ctx.has_secret_key():
        raise HEKeyError(
            f"{path} holds no secret key: hospitals need hospital/{HOSPITAL_CONTEXT_FILE} "
            "from `fedcare he keygen`, not the server's context"
        )
    if path.stat().st_mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %o); it holds the federation's secret key: chmod 600 it",
            path,
            path.stat().st_mode & 0o777,
        )
    return ctx


@dataclass(frozen=True)
class ServerHEContext:
    """What the server loads: the params-only context bytes and the public facts about the keys."""

    context_bytes: bytes
    params: HEParams
    key_id: str


def load_server_context(path: Path) -> ServerHEContext:
    """The server's context and, from he-params.json beside it, the parameters and key id.

    Refuses a context holding a secret key: with it the server could read every hospital's update.
    """
    path = Path(path)
    ctx = _read_context(path)
    if ctx.has_secret_key():
        raise HEKeyError(
            f"{path} holds the federation's SECRET key; the server must only get the public context "
            f"(server/{SERVER_CONTEXT_FILE} from `fedcare he keygen`). Remove this file from the server and "
            "consider the key exposed"
        )
    meta_path = path.parent / PARAMS_FILE
    try:
        meta = json.loads(meta_path.read_text())
        params, kid = params_from_dict(meta["params"]), str(meta["key_id"])
    except FileNotFoundError as exc:
        raise HEKeyError(f"{meta_path} is missing: `fedcare he keygen` writes it next to {path.name}") from exc
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise HEKeyError(f"{meta_path} is not a fedcare HE parameter file ({exc})") from exc
    facts = context_facts(ctx)
    if (facts["degree"], facts["scale_bits"]) != (params.poly_modulus_degree, params.global_scale_bits):
        raise HEKeyError(
            f"{path} (degree {facts['degree']}, scale 2**{facts['scale_bits']:g}) does not match "
            f"{meta_path} ({params.to_dict()})"
        )
    return ServerHEContext(context_bytes=path.read_bytes(), params=params, key_id=kid)


def _read_context(path: Path) -> ts.Context:
    try:
        return ts.context_from(path.read_bytes())
    except FileNotFoundError as exc:
        raise HEKeyError(f"{path}: HE context file not found (make one with `fedcare he keygen --out DIR`)") from exc
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++
        raise HEKeyError(f"{path} is not a TenSEAL context ({exc})") from exc


def context_facts(ctx: ts.Context) -> dict[str, Any]:
    """Degree, data-level bits and scale, read from the context itself."""
    seal = ctx.seal_context().data
    return {
        "degree": seal.key_context_data().parms().poly_modulus_degree(),
        "data_bits": seal.first_context_data().total_coeff_modulus_bit_count(),
        "scale_bits": math.log2(ctx.global_scale),
        "first_parms_id": list(seal.first_parms_id()),
    }


# ---------------------------------------------------------------------------------------------
# The bundle: what a hospital sends, and what the server sends back


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

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

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
            if set(raw) != set(types) or any(type(raw[k]) is not t for k, t in types.items()):
                raise ValueError(f"expected fields {sorted(types)} with types {[t.__name__ for t in types.values()]}")
            header = cls(**raw)
        except (ValueError, TypeError) as exc:
            raise InvalidCiphertext(f"header is malformed: {exc}") from exc
        if header.format != FORMAT:
            raise InvalidCiphertext(f"header format {header.format!r}, expected {FORMAT!r} (fedcare versions differ?)")
        if header.kind not in ("update", "sum"):
            raise InvalidCiphertext(f"header kind {header.kind!r} is neither 'update' nor 'sum'")
        if min(header.num_values, header.num_chunks, header.slots, header.num_examples, header.contributors) < 1:
            raise InvalidCiphertext("header counts must all be positive")
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
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise InvalidCiphertext(f"cannot read encrypted model file: {exc}") from exc
        return cls(HEHeader.parse(header_text), tuple(chunks), digest)


def put_bundle(content: RecordDict, bundle: EncryptedUpdate) -> None:
    """Store a bundle in a Flower message: chunks as uint8 Arrays (Flower 1.39 streams Arrays in 5 MB
    pieces), header and digest in a ConfigRecord (JSON text, so 64-bit run ids need no int64 care)."""
    content[CIPHERTEXTS_KEY] = ArrayRecord(
        OrderedDict(
            (f"c{i:06d}", Array(dtype="uint8", shape=(len(c),), stype=CHUNK_STYPE, data=c))
            for i, c in enumerate(bundle.chunks)
        )
    )
    content[HEADER_KEY] = ConfigRecord({"header": bundle.header.canonical().decode(), "digest": bundle.digest})


def take_bundle(content: RecordDict) -> EncryptedUpdate:
    """Read a bundle from a Flower message; raises InvalidCiphertext if it is missing or malformed."""
    if CIPHERTEXTS_KEY not in content or HEADER_KEY not in content:
        raise InvalidCiphertext(f"message has no encrypted update (records {CIPHERTEXTS_KEY!r} and {HEADER_KEY!r})")
    arrays, meta = content[CIPHERTEXTS_KEY], content[HEADER_KEY]
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise InvalidCiphertext("encrypted update records have the wrong record types")
    header = HEHeader.parse(str(meta.get("header", "")))
    names = sorted(arrays.keys())
    if names != [f"c{i:06d}" for i in range(len(names))]:
        raise InvalidCiphertext(f"ciphertext chunks are not numbered c000000..: got {names[:3]}...")
    chunks = []
    for name in names:
        arr = arrays[name]
        if arr.stype != CHUNK_STYPE:
            raise InvalidCiphertext(f"chunk {name} has stype {arr.stype!r}, expected {CHUNK_STYPE!r}")
        chunks.append(bytes(arr.data))
    return EncryptedUpdate(header, tuple(chunks), str(meta.get("digest", "")))


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


# ---------------------------------------------------------------------------------------------
# Hospital side


def encrypt_update(
    weights: OrderedDict[str, np.ndarray], *, num_examples: int, context: ts.Context, run_id: int, server_round: int
) -> EncryptedUpdate:
    """Encrypt `num_examples * weights` (flattened in key order) for the server to add.

    Chunks hold exactly one ciphertext each (degree/2 values): this is as fast as one large
    TenSEAL vector, avoids its per-vector C++ warning on stdout, and lets the server name a bad chunk.
    """
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if not weights:
        raise ValueError("no tensors to encrypt")
    facts = context_facts(context)
    slots = facts["degree"] // 2
    flat = flatten(weights) * float(num_examples)
    if not np.isfinite(flat).all():
        raise ValueError("update contains NaN or infinite values; refusing to encrypt it")
    bound = float(np.abs(flat).max(initial=0.0))
    limit = _max_abs_value(facts["data_bits"], facts["scale_bits"])
    if bound > limit:
        raise HEConfigError(
            f"num_examples * max|weight| = {bound:.4g} exceeds what these CKKS parameters hold ({limit:.4g}), and "
            "the sum over all hospitals must fit too: use a larger data modulus or a smaller scale (docs/he.md)"
        )
    values = np.concatenate([flat, [float(num_examples), bound * RANGE_CANARY_SHIFT]])
    # Every ciphertext ends with the sample count: a ciphertext altered after encryption (which a
    # server without the key cannot notice when it still parses) decrypts to a wrong check value.
    per = slots - 1
    chunks = tuple(
        ts.ckks_vector(context, np.append(values[i : i + per], float(num_examples))).serialize()
        for i in range(0, values.size, per)
    )
    header = HEHeader(
        kind="update",
        run_id=int(run_id),
        server_round=int(server_round),
        key_id=key_id(context),
        layout=layout_id(weights),
        num_values=int(flat.size),
        num_chunks=len(chunks),
        slots=slots,
        num_examples=int(num_examples),
    )
    return EncryptedUpdate(header, chunks).sealed()


def decrypt_sum(
    bundle: EncryptedUpdate,
    *,
    context: ts.Context,
    template: OrderedDict[str, np.ndarray],
    total_examples: int | None = None,
    run_id: int | None = None,
    server_round: int | None = None,
) -> OrderedDict[str, np.ndarray]:
    """Decrypt the server's sum, check it, divide by the total count, reshape like `template`.

    Raises InvalidCiphertext if the sum is not for this key, model, run or round, or if its canaries
    show a contribution under another key, a total that does not match, or a value out of range.
    """
    bundle.check_digest()
    h = bundle.header
    if h.kind != "sum":
        raise InvalidCiphertext(f"expected the server's encrypted sum, got an encrypted {h.kind}")
    own_key = key_id(context)
    if h.key_id != own_key:
        raise InvalidCiphertext(f"sum was made under key set {h.key_id}, this hospital holds {own_key}")
    if h.layout != layout_id(template):
        raise InvalidCiphertext("sum was made for another model (tensor names, shapes or dtypes differ)")
    if (run_id is not None and h.run_id != run_id) or (server_round is not None and h.server_round != server_round):
        raise InvalidCiphertext(
            f"sum is for run {h.run_id} round {h.server_round}, expected run {run_id} round {server_round}"
        )
    total = h.num_examples if total_examples is None else int(total_examples)
    if total != h.num_examples:
        raise InvalidCiphertext(f"total_examples {total} differs from the sum's header ({h.num_examples})")
    parts = []
    for i, chunk in enumerate(bundle.chunks):
        try:
            part = np.asarray(ts.ckks_vector_from(context, chunk).decrypt(), dtype=np.float64)
        except Exception as exc:
            raise InvalidCiphertext(f"chunk {i} of the sum does not decrypt: {exc}") from exc
        if part.size < 2 or not abs(part[-1] - total) <= CHECK_TOLERANCE:
            raise InvalidCiphertext(
                f"chunk {i} of the sum fails its check value "
                f"({part[-1] if part.size else 'missing'} instead of {total}): "
                "a contribution was altered after it was encrypted, or made under another key"
            )
        parts.append(part[:-1])
    values = np.concatenate(parts)
    if values.size != h.num_values + NUM_CANARIES:
        raise InvalidCiphertext(f"sum holds {values.size} values, expected {h.num_values + NUM_CANARIES}")
    count, bound = values[h.num_values], values[h.num_values + 1] / RANGE_CANARY_SHIFT
    if abs(count - total) > 0.01:
        raise InvalidCiphertext(
            f"decrypted sample count {count:.6g} != reported total {total}: a contribution was encrypted under "
            "another key, the total does not match the ciphertexts summed, or the sum wrapped around"
        )
    facts = context_facts(context)
    limit = _max_abs_value(facts["data_bits"], facts["scale_bits"])
    if not 0 <= bound <= limit:
        raise HEConfigError(
            f"the sum may have wrapped around: values up to {bound:.4g} against a CKKS range of "
            f"{limit:.4g}; use a larger data modulus or a smaller scale (docs/he.md)"
        )
    # |sum of x_i| <= sum of max|x_i|, which is what the bound canary adds up.
    worst = float(np.abs(values[: h.num_values]).max(initial=0.0))
    if worst > bound * (1 + 1e-6) + CHECK_TOLERANCE:
        raise InvalidCiphertext(
            f"the sum holds a value of {worst:.4g}, beyond the {bound:.4g} its contributors "
            "declared: a contribution was altered after it was encrypted"
        )
    return unflatten(values[: h.num_values] / total, template=template)


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
