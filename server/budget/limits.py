"""What the budget service accepts from a request: every number's range and every string's length, declared once.

Anything outside these is refused with a 422 naming the field, before it can
reach the database or the accountants. The reasons, all found by fuzzing:

* Ids and offsets are 64-bit integers in both databases; a larger one made
  SQLite raise OverflowError and PostgreSQL a DataError (HTTP 500).
* Rounds and steps are 32-bit columns on PostgreSQL.
* Opacus divides by the noise multiplier and by delta: subnormal values
  (5e-324) raised ZeroDivisionError, a huge noise multiplier OverflowError.
* The PRV accountant's grid grows with 1/noise and with the steps: a noise
  multiplier of 1e-3 asked numpy for 670 GiB; and Opacus slows down with
  large noise (10 s for one event at 1000 and sample rate 0.5). The ranges
  below keep single events sane; `core.accounting` also bounds the grid of a
  whole history.
* PostgreSQL refuses NUL characters in text (a DataError); names and run ids
  must be printable.

The DP event's fields themselves are declared in `common.dp_event` (and the
service's schemas); this module only says which of their values the service takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator

MAX_ID = 2**63 - 1  # BIGINT (int64): institution ids and offsets
MAX_INT32 = 2**31 - 1  # INTEGER on PostgreSQL: rounds and steps
MAX_NAME_LENGTH = 100  # institution and aggregator names (the column is String(100))
MAX_RUN_ID_LENGTH = 64  # Flower run ids are uint64 as text; the column is String(64)
MAX_TOKEN_LENGTH = 512  # issued tokens are 47 characters; anything this long is not one of ours
MAX_EPSILON = 1e9  # no meaningful guarantee is stated with a larger epsilon


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number the service accepts; `high_open` makes the upper one exclusive."""

    low: float
    high: float
    high_open: bool = False
    why: str = ""

    def check(self, name: str, value: float) -> float:
        """`value` if in range; else a ValueError saying the range (pydantic adds the field and the value)."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        above = value >= self.high if self.high_open else value > self.high
        if value < self.low or above:
            upper = f"below {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
            reason = f" ({self.why})" if self.why else ""
            raise ValueError(f"{name} must be at least {_number(self.low)} and {upper}{reason}")
        return value

    def json_schema(self) -> dict[str, float]:
        key = "exclusiveMaximum" if self.high_open else "maximum"
        return {"minimum": self.low, key: self.high}


DELTA = Range(1e-30, 1.0, high_open=True, why="the accountants divide by delta; smaller values underflow")

# The ranges of a new DP event's numbers (its fields are declared in common.dp_event).
EVENT_RANGES: dict[str, Range] = {
    "noise_multiplier": Range(
        0.01, 100.0, why="less noise gives no meaningful privacy and overflows the accountants; more is pointless"
    ),
    "sample_rate": Range(1e-12, 1.0),
    "steps": Range(1, MAX_INT32),
    "server_round": Range(1, MAX_INT32),
    "epsilon": Range(0.0, MAX_EPSILON),
    "delta": DELTA,
}

# The ranges of a new institution's numbers.
INSTITUTION_RANGES: dict[str, Range] = {"epsilon_limit": Range(1e-12, MAX_EPSILON), "delta": DELTA}


def printable(value: str) -> str:
    """Text without control characters (PostgreSQL refuses NUL) or surrounding spaces."""
    if value != value.strip() or not value.isprintable():
        raise ValueError(f"{value[:120]!r} has leading/trailing spaces or control characters")
    return value


PrintableText = Annotated[str, AfterValidator(printable)]

# Path and query parameters, bounded where the routes declare them.
InstitutionId = Annotated[int, Path(ge=1, le=MAX_ID, description="The institution's id")]
RunId = Annotated[PrintableText, Path(min_length=1, max_length=MAX_RUN_ID_LENGTH, description="Flower run id")]
InstitutionNameQuery = Annotated[
    PrintableText | None,
    Query(min_length=1, max_length=MAX_NAME_LENGTH, description="Only the institution of this name"),
]
PageLimit = Annotated[int, Query(ge=1, le=1000)]
PageOffset = Annotated[int, Query(ge=0, le=MAX_ID)]
