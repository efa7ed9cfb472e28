"""What only a hospital runs: encrypt its update, decrypt the server's sum.

Both need the hospitals' secret context, which the server never holds; nothing the server runs
imports this module.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import tenseal as ts

from common.he.keys import key_id
from common.he.params import HEConfigError, context_facts, max_abs_value
from common.he.wire import (
    NUM_CANARIES,
    RANGE_CANARY_SHIFT,
    EncryptedUpdate,
    HEHeader,
    InvalidCiphertext,
    flatten,
    layout_id,
    unflatten,
)

CHECK_TOLERANCE = 1e-3  # CKKS error here is about 1e-8 per value; a check slot off by more was altered


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
    limit = max_abs_value(facts["data_bits"], facts["scale_bits"])
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
    limit = max_abs_value(facts["data_bits"], facts["scale_bits"])
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
