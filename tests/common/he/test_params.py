"""Which CKKS parameters are accepted, and what the defaults hold."""

from __future__ import annotations

import pytest

from common.he.keys import make_keys
from common.he.params import HEConfigError, HEParams, validate_params


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
