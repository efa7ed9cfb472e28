"""Hypothesis strategies for hostile input: the values that broke parsers before, plus whatever hypothesis makes.

Each strategy mixes a few hand-picked edge cases (int64 and int32 limits,
subnormal and huge floats, NUL and control characters, overlong text) with
hypothesis's own values, so even a small `max_examples` hits the edges.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

EDGE_INTS = [0, -1, 1, 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
EDGE_FLOATS = [
    0.0,
    -0.0,
    5e-324,  # the smallest subnormal: the noise multiplier and delta that broke the PRV accountant
    2.2250738585072014e-308,
    1e-300,
    1e-12,
    0.5,
    1.0 - 1e-16,
    1.0,
    1e300,
    1.7976931348623157e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]
# JSON texts that break parsers by their shape: nesting beyond Python's recursion limit, non-finite literals.
EDGE_JSON_TEXT = [
    "[" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    '"\\ud800"',
]
EDGE_TEXT = ["", " ", "\x00", "a\x00b", "\n", " padded ", "é", "\u202e", "\ud800", "x" * 65, "x" * 101, "x" * 5000]


def hostile_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EDGE_INTS), st.integers(), st.integers(min_value=-10, max_value=1000))


def hostile_floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(), st.floats(min_value=0, max_value=1))


def hostile_text(*, max_size: int = 200) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=max_size))


def json_scalars() -> st.SearchStrategy:
    return st.one_of(st.none(), st.booleans(), hostile_ints(), hostile_floats(), hostile_text(max_size=40))


def json_texts() -> st.SearchStrategy[str]:
    """JSON documents as text, including the edge cases of EDGE_JSON_TEXT."""
    return st.one_of(st.sampled_from(EDGE_JSON_TEXT), json_values().map(json.dumps))


def json_values(*, max_leaves: int = 12) -> st.SearchStrategy:
    """Any JSON value (NaN and infinities included, as Python's json writes them)."""
    return st.recursive(
        json_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def near(value: object, wrong: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly `value`, sometimes something `wrong`: fields of a request that is almost right."""
    return st.one_of(st.just(value), st.just(value), wrong)


def mutated_bytes(original: bytes, *, max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """`original` with bytes flipped, cut, repeated or inserted: a file or message damaged on the way."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(original)
        for _ in range(draw(st.integers(min_value=1, max_value=max_edits))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "duplicate"]))
            at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
            if kind == "flip" and data:
                data[at] ^= draw(st.integers(min_value=1, max_value=255))
            elif kind == "cut" and data:
                del data[at : at + draw(st.integers(min_value=1, max_value=64))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=32))
            elif kind == "truncate":
                del data[at:]
            elif kind == "duplicate" and data:
                data[at:at] = data[at : at + draw(st.integers(min_value=1, max_value=64))]
        return bytes(data)

    return build()
