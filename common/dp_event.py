"""The DP event: what one hospital's round spent, declared once for every hop it takes.

The hospital's accountant commits it, the ClientApp sends it as its `dp-event`
record, the ServerApp forwards it (plus the institution's name) to the budget
service, and the service stores and replays it. Each hop uses this module, so
epsilon keeps one shape from the hospital to the dashboard, and the budget
service's schemas are checked against `LEDGER_FIELDS` by a test.

`epsilon_of` is the reference computation (Opacus) that hospitals and the
budget service both replay events with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)

# The most events one POST /v1/events carries: the service refuses bigger batches, the clients split them.
MAX_BATCH = 1000

# How each declared field type is carried on the wire (ConfigRecord, JSON): plain Python scalars.
_SCALARS = {"float": float, "int": int, "str": str, "Accountant": str}


@dataclass(frozen=True, kw_only=True)
class DPEvent:
    """What one round spent, in the terms any accountant can replay.

    Values are normalized to their declared scalar types whatever the caller passed (a Flower
    ConfigRecord, JSON, an integer run id), so `as_record` is always ready to send.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: Accountant
    epsilon: float  # cumulative over everything this institution has spent, after this round
    delta: float
    run_id: str  # Flower's run id as text: run ids exceed a signed 64-bit metric
    server_round: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, _SCALARS[f.type](value))
            except (TypeError, ValueError):
                raise ValueError(f"DP event field {f.name} is {value!r}, not a {_SCALARS[f.type].__name__}") from None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DPEvent:
        """The event a `dp-event` record (or a ledger record) carries; other keys are ignored."""
        missing = [name for name in RECORD_FIELDS if name not in record]
        if missing:
            raise ValueError(f"DP event {dict(record)!r} lacks {', '.join(missing)}")
        return cls(**{name: record[name] for name in RECORD_FIELDS})

    def as_record(self) -> dict[str, Any]:
        """The event as the ClientApp's `dp-event` record and the hospital's state file carry it."""
        return asdict(self)

    def for_ledger(self, *, institution: str) -> dict[str, Any]:
        """The event as the budget service stores it: the record plus who spent it."""
        return {"institution": institution, **self.as_record()}


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DPEvent))

# A reply's record of the run's earlier events, resent with every update and with the final scoring's reply: a
# ClientApp killed after it committed a round's spending (before training) but before its reply left never reported
# that round; the next reply does (for the last round, the final scoring's). The ledger stores an event once per
# (institution, run, round) and answers a resend `duplicate`.
EARLIER_RECORD = "dp-events-earlier"


def earlier_events_record(events: list[DPEvent]) -> dict[str, str]:
    """The earlier events as one ConfigRecord value (records cannot nest): JSON text."""
    return {"events": json.dumps([event.as_record() for event in events])}


def earlier_events(record: Mapping[str, Any], *, run_id: str, before_round: int) -> list[DPEvent]:
    """The events an `EARLIER_RECORD` carries of run `run_id` before `before_round`; ValueError when malformed."""
    try:
        raw = json.loads(str(record.get("events", "[]")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{EARLIER_RECORD} is not JSON: {exc}") from None
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ValueError(f"{EARLIER_RECORD} must be a list of DP events")
    events = [DPEvent.from_record(r) for r in raw]
    for event in events:
        if event.run_id != run_id or not 1 <= event.server_round < before_round:
            raise ValueError(f"{EARLIER_RECORD}: run {event.run_id} round {event.server_round} is not an earlier round")
    return events


LEDGER_FIELDS: tuple[str, ...] = ("institution", *RECORD_FIELDS)


def ledger_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ledger's fields of one event, as JSON-ready scalars; raises ValueError naming what is missing."""
    missing = [name for name in LEDGER_FIELDS if name not in raw]
    if missing:
        raise ValueError(f"DP event {dict(raw)!r} lacks {', '.join(missing)}")
    return DPEvent.from_record(raw).for_ledger(institution=str(raw["institution"]))


def steps_by_setting(history: Iterable[tuple[float, float, int]]) -> dict[tuple[float, float], int]:
    """A (noise, sample rate, steps) history as total steps per (noise, sample rate), in first-seen order."""
    steps: dict[tuple[float, float], int] = {}
    for noise, rate, n in history:
        key = (float(noise), float(rate))
        steps[key] = steps.get(key, 0) + int(n)
    return steps


def epsilon_of(history: list[tuple[float, float, int]], *, accountant: str, delta: float) -> float:
    """Epsilon of a (noise, sample rate, steps) history under the named Opacus accountant.

    The history is summarized first, as the budget service does (server/budget/core/accounting.py): composition
    does not depend on order, and n steps of a mechanism then m more are n + m steps of it, so the rounds of one
    setting become one entry. A hospital replays its whole history in every message; replayed round by round, 35
    rounds took 2.1 s (RDP) and 10 s (PRV) and grew with every round, summarized 0.11 s and 0.46 s. RDP gives the
    same float; PRV differs in the tenth significant digit (its grid is sized from the entries)."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # lazy: keeps evaluate-only processes and the ServerApp light

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise, rate, n) for (noise, rate), n in steps_by_setting(history).items()]
    return float(acc.get_epsilon(delta=delta))
