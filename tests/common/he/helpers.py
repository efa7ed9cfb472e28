"""A small model to encrypt, and the bytes loader for a hospital's context that only tests use."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import tenseal as ts

from common.he.keys import HOSPITAL_CONTEXT_FILE, HEKeyError


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


def load_hospital_context(data: bytes) -> ts.Context:
    """A hospital's context from bytes; it must hold the secret key (production loads it from a file,
    with `common.he.keys.load_secret_context`)."""
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++
        raise HEKeyError(f"hospital HE context is not a TenSEAL context ({len(data)} bytes): {exc}") from exc
    if not ctx.has_secret_key():
        raise HEKeyError(
            "the hospital HE context holds no secret key: hospitals need hospital/"
            f"{HOSPITAL_CONTEXT_FILE} from `fedcare he keygen`, not the server's context"
        )
    return ctx
