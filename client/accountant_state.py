"""The hospital's own privacy accountant, kept on its own disk across rounds and runs.

The hospital is the source of truth for what it has spent. Before an update
leaves the node, the round's spending is written to the state file atomically
(temp file, fsync, rename). A crash between that write and the reply can only
over-count, never under-count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.rdp_curves import rdp_epsilon
from common.atomic import write_json_atomic
from common.dp_event import DPEvent, epsilon_of

FORMAT = "fedcare-accountant/1"


class AccountantStateError(ValueError):
    """A state file that is corrupt, foreign or from an unknown format; training stops."""


def _check_history(raw: Any, *, path: Path) -> list[tuple[float, float, int]]:
    if not isinstance(raw, list):
        raise AccountantStateError(f"{path}: 'history' must be a list of [noise, sample_rate, steps]")
    history = []
    for i, entry in enumerate(raw):
        try:
            sigma, q, steps = entry
            sigma, q = float(sigma), float(q)
            if int(steps) != steps:
                raise ValueError
            steps = int(steps)
        except (TypeError, ValueError):
            raise AccountantStateError(
                f"{path}: history entry {i} is {entry!r}, not [noise, sample_rate, steps]"
            ) from None
        if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and steps >= 1):
            raise AccountantStateError(
                f"{path}: history entry {i} {entry!r} is out of range (noise > 0, 0 < sample_rate <= 1, steps >= 1)"
            )
        history.append((sigma, q, steps))
    return history


@dataclass
class HospitalAccountant:
    """Load, project, commit. `path` is under the hospital's state directory."""

    path: Path
    institution: str
    history: list[tuple[float, float, int]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_institution(cls, state_dir: Path, institution: str) -> HospitalAccountant:
        path = Path(state_dir) / "privacy-accountant.json"
        if not path.exists():
            return cls(path=path, institution=institution)
        return cls.load(path, institution=institution)

    @classmethod
    def load(cls, path: Path, *, institution: str) -> HospitalAccountant:
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AccountantStateError(
                f"{path}: the privacy accountant state is unreadable ({exc}); refusing to train rather than "
                "forget spent budget. Restore it from backup; never delete it to 'reset' a budget."
            ) from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise AccountantStateError(f"{path}: not a fedcare accountant file (expected format {FORMAT!r})")
        if raw.get("institution") != institution:
            raise AccountantStateError(
                f"{path}: this accountant belongs to {raw.get('institution')!r}, not {institution!r}; "
                "each hospital needs its own state directory"
            )
        state = raw.get("state")
        if not isinstance(state, dict):
            raise AccountantStateError(f"{path}: missing 'state' (an Opacus accountant state_dict)")
        events = raw.get("events", [])
        if not isinstance(events, list):
            raise AccountantStateError(f"{path}: 'events' must be a list")
        return cls(
            path=path, institution=institution, history=_check_history(state.get("history"), path=path), events=events
        )

    def epsilon(self, *, accountant: str, delta: float) -> float:
        return self._epsilon(self.history, accountant=accountant, delta=delta)

    def projected_epsilon(
        self, *, noise_multiplier: float, sample_rate: float, steps: int, accountant: str, delta: float
    ) -> float:
        history = [*self.history, (noise_multiplier, sample_rate, steps)]
        return self._epsilon(history, accountant=accountant, delta=delta)

    def _epsilon(self, history: list[tuple[float, float, int]], *, accountant: str, delta: float) -> float:
        """`epsilon_of`'s value; under RDP from the one-step curves kept next to this file (client/rdp_curves.py)."""
        if accountant == "rdp":
            return rdp_epsilon(history, delta=delta, state_dir=self.path.parent)
        return epsilon_of(history, accountant=accountant, delta=delta)

    def recorded(self, *, run_id: int, server_round: int) -> DPEvent | None:
        """The event already committed for this (run, round), if any: a resumed run's round is charged once."""
        for record in reversed(self.events):
            if str(record.get("run_id")) == str(run_id) and record.get("server_round") == server_round:
                return DPEvent.from_record(record)
        return None

    def commit(self, event: DPEvent) -> None:
        """Record the round's spending durably; call this before the update leaves the node."""
        self.history.append((event.noise_multiplier, event.sample_rate, event.steps))
        recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.events.append(event.as_record() | {"recorded_at": recorded_at})
        self._write(event.accountant)

    def amend_to_steps_taken(self, event: DPEvent, *, steps: int) -> DPEvent:
        """The round's committed `event` lowered to the `steps` its loop took (it stopped at the round's deadline),
        written durably; returns the amended event. Only before the update leaves the node: until then the steps
        not taken released nothing, and a crash before this write leaves the higher count (over, never under)."""
        last = self.events[-1] if self.events else {}
        entry = (event.noise_multiplier, event.sample_rate, event.steps)
        if (
            not self.history
            or self.history[-1] != entry
            or (str(last.get("run_id")), last.get("server_round")) != (str(event.run_id), event.server_round)
        ):
            raise AccountantStateError(
                f"{self.path}: the last committed event is not run {event.run_id} round "
                f"{event.server_round}'s; cannot amend it"
            )
        if not 1 <= steps <= event.steps:
            raise AccountantStateError(f"{self.path}: cannot amend {event.steps} committed steps to {steps}")
        history = [*self.history[:-1], (event.noise_multiplier, event.sample_rate, steps)]
        amended = replace(
            event, steps=steps, epsilon=self._epsilon(history, accountant=event.accountant, delta=event.delta)
        )
        self.history = history
        self.events[-1] = amended.as_record() | {
            "recorded_at": last.get("recorded_at"),
            "amended": "stopped at deadline",
        }
        self._write(event.accountant)
        return amended

    def _write(self, mechanism: str) -> None:
        write_json_atomic(
            self.path,
            {
                "format": FORMAT,
                "institution": self.institution,
                # The Opacus accountant state_dict: {'history': [(sigma, q, steps), ...], 'mechanism': ...}.
                "state": {"history": [list(h) for h in self.history], "mechanism": mechanism},
                "events": self.events,
            },
        )
