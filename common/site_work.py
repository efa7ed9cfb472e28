"""What a hospital did in a round and what it can do: the one shape of its work report, and of its schedule.

The server schedules local work against `round-deadline` (server/local_work.py) from what each hospital
measured in its last round, and weighs the updates by the steps each one took (server/fednova.py). Both
facts travel in clear in every privacy mode: steps are in the DP event the ledger stores anyway, and a
hospital's speed says nothing about its patients (docs/compute.md, "Hospitals of unequal speed").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import ConfigRecord, RecordDict

WORK_RECORD = "work"  # a train reply's report (ConfigRecord)
SCHEDULE_RECORD = "schedule"  # a train message's local work for its hospital (ConfigRecord)


class WorkReportError(ValueError):
    """A work report or schedule that cannot be used: a hospital of another fedcare version, or a bad value."""


@dataclass(frozen=True)
class SiteWork:
    """One hospital's round: the steps it took and could have taken, its times, and its capabilities."""

    local_steps: int  # optimizer steps taken (with DP: noisy steps, as the accountant recorded them)
    full_steps: int  # the steps `local-epochs` over its data would take: the most the server schedules
    train_seconds: float  # the local steps alone (their sum)
    step_seconds: float  # one step's typical time: the median step, so a slow first step (warm-up) does not skew it
    round_seconds: float  # the whole train message at the hospital: loading, scoring, training, packing
    device: str  # "cpu" or the accelerator's name
    memory_bytes: int  # the device's memory (the host's RAM on CPU)
    examples_per_second: float  # measured in this round's training (expected Poisson batch size x steps / s)

    @property
    def overhead_seconds(self) -> float:
        """What the round costs besides training (data, model, scoring, encryption): not shortened by fewer steps."""
        return max(0.0, self.round_seconds - self.train_seconds)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: ConfigRecord | dict[str, Any]) -> SiteWork:
        try:
            work = cls(
                local_steps=int(record["local_steps"]),
                full_steps=int(record["full_steps"]),
                train_seconds=float(record["train_seconds"]),
                step_seconds=float(record["step_seconds"]),
                round_seconds=float(record["round_seconds"]),
                device=str(record["device"]),
                memory_bytes=int(record["memory_bytes"]),
                examples_per_second=float(record["examples_per_second"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkReportError(f"work report {dict(record)!r} is incomplete or malformed: {exc}") from exc
        if (
            work.local_steps < 0
            or work.full_steps < 1
            or not min(work.train_seconds, work.step_seconds, work.round_seconds) >= 0
        ):
            raise WorkReportError(f"work report out of range: {work}")
        return work


@dataclass(frozen=True)
class Schedule:
    """One hospital's local work for a round: at most `local_steps` (None: `local-epochs` in full, as in the first
    round, before it was measured), and stop early when the round would overrun `deadline` seconds."""

    deadline: float
    local_steps: int | None = None


def put_schedule(content: RecordDict, schedule: Schedule) -> None:
    """Put one hospital's schedule into its train message."""
    if schedule.local_steps is not None and schedule.local_steps < 1:
        raise WorkReportError(f"a schedule of {schedule.local_steps} local steps: at least 1")
    record: dict[str, Any] = {"deadline": float(schedule.deadline)}
    if schedule.local_steps is not None:
        record["local-steps"] = schedule.local_steps
    content[SCHEDULE_RECORD] = ConfigRecord(record)


def read_schedule(content: RecordDict) -> Schedule | None:
    """The server's schedule for this hospital; None: round-deadline is off, train `local-epochs` in full."""
    record = content.get(SCHEDULE_RECORD)
    if record is None:
        return None
    try:
        schedule = Schedule(
            deadline=float(record["deadline"]),
            local_steps=int(record["local-steps"]) if "local-steps" in record else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkReportError(f"the server's schedule {dict(record)!r} is malformed: {exc}") from exc
    if not schedule.deadline > 0 or (schedule.local_steps is not None and schedule.local_steps < 1):
        raise WorkReportError(f"the server's schedule {schedule} is out of range: a deadline > 0, at least 1 step")
    return schedule
