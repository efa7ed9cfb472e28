"""CKKS parameters: which are safe, what they hold, and the TenSEAL context they make.

Every role needs these: the key maker to build the context, the server to size what it accepts, a
hospital to know the largest value a sum can hold without wrapping around.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import tenseal as ts

# Largest total coefficient modulus (bits) that keeps RLWE at 128-bit classical security, per
# polynomial degree (HomomorphicEncryption.org standard, ternary secret; SEAL's MaxBitCount).
SECURITY_BOUND_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SUPPORTED_DEGREES = (4096, 8192, 16384, 32768)  # 1024 and 2048 leave no room for a useful scale
MIN_PRIME_BITS, MAX_PRIME_BITS = 20, 60  # SEAL's primes are at most 60 bits; NTT needs > log2(2N)
MIN_SCALE_BITS = 30  # sum error grows as 2**-scale_bits: about 1e-6 at 2**30, 1e-9 at 2**40
MIN_HEADROOM_BITS = 10  # data bits - scale bits: what is left for the integer part of the sum


class HEConfigError(ValueError):
    """CKKS parameters that are insecure, unsupported or too small for the values to encrypt."""


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
        return max_abs_value(self.data_bits, self.global_scale_bits)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes)}


def max_abs_value(data_bits: int, scale_bits: float) -> float:
    """Largest |value| that fits `data_bits` of modulus at scale 2**`scale_bits`, one bit of margin kept."""
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


def build_context(params: HEParams) -> ts.Context:
    """A fresh CKKS context with a new secret key, for symmetric encryption on one thread."""
    params = validate_params(params)
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
    return ctx


def context_facts(ctx: ts.Context) -> dict[str, Any]:
    """Degree, data-level bits and scale, read from the context itself."""
    seal = ctx.seal_context().data
    return {
        "degree": seal.key_context_data().parms().poly_modulus_degree(),
        "data_bits": seal.first_context_data().total_coeff_modulus_bit_count(),
        "scale_bits": math.log2(ctx.global_scale),
        "first_parms_id": list(seal.first_parms_id()),
    }
