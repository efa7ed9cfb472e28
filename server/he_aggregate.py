"""Adding hospitals' CKKS-encrypted updates without being able to read them.

The server holds a params-only context: enough to deserialize and add ciphertexts, not to decrypt
or encrypt. Updates are checked and added one hospital at a time, so memory holds the running sum,
the candidate sum and one hospital's message, whatever the number of hospitals. A rejected update
leaves the running sum exactly as it was: the candidate sum is built beside it and swapped in only
when every chunk of that hospital has been checked and added.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass, field

import tenseal as ts

from common.he.keys import load_public_context
from common.he.params import MIN_PRIME_BITS, context_facts
from common.he.wire import EncryptedUpdate, HEHeader, InvalidCiphertext, chunk_lengths, num_chunks_for

log = logging.getLogger(__name__)

MAX_EXAMPLES = 2**31 - 1  # a sample count beyond this is a bug or an attempt to outweigh everyone


class EmptyAggregate(RuntimeError, ValueError):
    """No hospital's encrypted update was accepted this round (a ValueError too, as the HE-mode brief asks)."""


@dataclass
class HEAggregator:
    """The encrypted FedAvg numerator for one round: add() each hospital, then result().

    `expected_values` is the model's value count (its parameters, flattened); `key_id` and
    `layout`, when given (from he-params.json and `common.he.wire.layout_id` of the model), reject a
    hospital with another key set or another model by name, before any chunk is touched.
    """

    server_context_bytes: bytes = field(repr=False)
    _: KW_ONLY
    expected_values: int
    run_id: int
    server_round: int
    key_id: str | None = None
    layout: str | None = None
    bytes_received: dict[str, int] = field(default_factory=dict, init=False)
    rejected: dict[str, str] = field(default_factory=dict, init=False)
    accepted: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._ctx = load_public_context(self.server_context_bytes)
        facts = context_facts(self._ctx)
        self._slots = facts["degree"] // 2
        self._first_parms_id = facts["first_parms_id"]
        self._scale = self._ctx.global_scale
        # A fresh ciphertext is 2 polynomials over the data primes (each >= MIN_PRIME_BITS); zstd only shrinks it.
        data_primes = math.ceil(facts["data_bits"] / MIN_PRIME_BITS)
        self._max_chunk_bytes = 2 * facts["degree"] * 8 * data_primes + 4096
        self._num_chunks = num_chunks_for(self.expected_values, self._slots)
        self._sum: list[ts.CKKSVector] | None = None
        self._first: HEHeader | None = None  # the first accepted header: key set and layout for the rest
        self._total_examples = 0

    @property
    def total_examples(self) -> int:
        return self._total_examples

    def add(self, bundle: EncryptedUpdate, *, institution: str) -> int:
        """Check `bundle` in full, then add it and return the bytes received; on any problem raise
        InvalidCiphertext and log it (the running sum is then unchanged)."""
        self.bytes_received[institution] = bundle.nbytes
        try:
            if institution in self.accepted:
                raise InvalidCiphertext("this institution already contributed to this round")
            self._check_header(bundle)
            candidate = self._add_chunks(bundle)
        except InvalidCiphertext as exc:
            self.rejected[institution] = str(exc)
            log.warning(
                "run %s round %d: rejected encrypted update from %s: %s",
                self.run_id,
                self.server_round,
                institution,
                exc,
            )
            raise
        self._sum = candidate
        self._first = self._first or bundle.header
        self._total_examples += bundle.header.num_examples
        self.accepted.append(institution)
        log.info(
            "run %s round %d: added encrypted update from %s (%d examples, %d bytes)",
            self.run_id,
            self.server_round,
            institution,
            bundle.header.num_examples,
            bundle.nbytes,
        )
        return bundle.nbytes

    def check(self, bundle: EncryptedUpdate, *, institution: str) -> None:
        """Every check `add` makes, adding nothing: for a bundle that must go in with another one or not
        at all (a hospital's metrics beside its update). Raises InvalidCiphertext."""
        if institution in self.accepted:
            raise InvalidCiphertext("this institution already contributed to this round")
        self._check_header(bundle)
        self._add_chunks(bundle)

    def result(self, *, effective_steps: float | None = None) -> tuple[EncryptedUpdate, int]:
        """The encrypted sum (kind 'sum') and the total sample count, for the hospitals to divide by;
        `effective_steps`: FedNova's τ_eff, in the sum's clear header (server/he_rounds.py)."""
        if self._sum is None or self._first is None:
            raise EmptyAggregate(
                f"run {self.run_id} round {self.server_round}: no valid encrypted update "
                f"(rejected: {self.rejected or 'none received'})"
            )
        header = HEHeader(
            kind="sum",
            run_id=self.run_id,
            server_round=self.server_round,
            key_id=self._first.key_id,
            layout=self._first.layout,
            num_values=self.expected_values,
            num_chunks=self._num_chunks,
            slots=self._slots,
            num_examples=self._total_examples,
            contributors=len(self.accepted),
            effective_steps=effective_steps,
        )
        return EncryptedUpdate(header, tuple(v.serialize() for v in self._sum)).sealed(), self._total_examples

    def _check_header(self, bundle: EncryptedUpdate) -> None:
        bundle.check_digest()
        h = bundle.header
        if h.kind != "update":
            raise InvalidCiphertext(f"expected an encrypted update, got an encrypted {h.kind}")
        if h.run_id != self.run_id or h.server_round != self.server_round:
            raise InvalidCiphertext(
                f"update is for run {h.run_id} round {h.server_round}, this is run {self.run_id} "
                f"round {self.server_round} (replayed or stale)"
            )
        key_id = self.key_id or (self._first.key_id if self._first else None)
        if key_id is not None and h.key_id != key_id:
            raise InvalidCiphertext(
                f"update is under key set {h.key_id}, the federation's is {key_id} "
                "(hospital has old or foreign HE keys)"
            )
        layout = self.layout or (self._first.layout if self._first else None)
        if layout is not None and h.layout != layout:
            raise InvalidCiphertext("update is for another model (tensor names, shapes or dtypes differ)")
        if h.num_values != self.expected_values:
            raise InvalidCiphertext(f"update has {h.num_values} values, the model has {self.expected_values}")
        if h.slots != self._slots or h.num_chunks != self._num_chunks or len(bundle.chunks) != self._num_chunks:
            raise InvalidCiphertext(
                f"update has {len(bundle.chunks)} chunks of {h.slots} slots, expected "
                f"{self._num_chunks} of {self._slots}"
            )
        if not 1 <= h.num_examples <= MAX_EXAMPLES:
            raise InvalidCiphertext(f"sample count {h.num_examples} is out of range 1..{MAX_EXAMPLES}")
        if h.contributors != 1:
            raise InvalidCiphertext(f"an update must come from 1 contributor, header says {h.contributors}")

    def _add_chunks(self, bundle: EncryptedUpdate) -> list[ts.CKKSVector]:
        lengths = chunk_lengths(self.expected_values, self._slots)
        candidate: list[ts.CKKSVector] = []
        for i, (blob, length) in enumerate(zip(bundle.chunks, lengths, strict=True)):
            vec = self._load_chunk(i, blob, length)
            try:
                candidate.append(vec if self._sum is None else self._sum[i] + vec)
            except Exception as exc:
                raise InvalidCiphertext(f"chunk {i} cannot be added to the sum: {exc}") from exc
        return candidate

    def _load_chunk(self, i: int, blob: bytes, length: int) -> ts.CKKSVector:
        if not 0 < len(blob) <= self._max_chunk_bytes:
            raise InvalidCiphertext(
                f"chunk {i} is {len(blob)} bytes; a ciphertext here is at most {self._max_chunk_bytes}"
            )
        try:
            vec = ts.ckks_vector_from(self._ctx, blob)
        except Exception as exc:  # TenSEAL/SEAL raise ValueError or RuntimeError from C++
            raise InvalidCiphertext(
                f"chunk {i} does not deserialize under the federation's CKKS parameters: {exc}"
            ) from exc
        if vec.size() != length:
            raise InvalidCiphertext(f"chunk {i} holds {vec.size()} values, expected {length}")
        cts = vec.ciphertext()
        if len(cts) != 1:
            raise InvalidCiphertext(f"chunk {i} holds {len(cts)} ciphertexts, expected 1")
        ct = cts[0]
        if list(ct.parms_id()) != self._first_parms_id:
            raise InvalidCiphertext(f"chunk {i} is at another modulus level or made under other parameters")
        if ct.size() != 2:
            raise InvalidCiphertext(f"chunk {i} has {ct.size()} polynomials, a fresh ciphertext has 2")
        if ct.is_transparent():
            raise InvalidCiphertext(f"chunk {i} is transparent: it is not encrypted at all")
        if not math.isclose(ct.scale, self._scale, rel_tol=1e-9):
            raise InvalidCiphertext(
                f"chunk {i} has scale 2**{math.log2(ct.scale):.2f}, expected 2**{math.log2(self._scale):.2f}"
            )
        return vec
