"""Deadline scheduling: each hospital gets the local steps that fit `round-deadline`, from its measured speed.

A slow site then shortens its own round instead of holding back everyone's. What a hospital measured in its
last round (`common.site_work.SiteWork`: seconds per step, the time its round spends besides training, the
steps `local-epochs` would take) gives its next round's steps:

    steps = clamp(floor((deadline * safety - overhead) / step_seconds), 1, full_steps)

where `step_seconds` is its median step and `overhead` the rest of its round besides the steps' time.

A hospital not yet measured (the first round it takes part in) trains its full `local-epochs`; that round
may overrun the deadline once. The schedule is a cap: a hospital takes exactly the scheduled steps, so its
DP event records the steps it took (client/dp_training.py, `plan_round`). Updates of unequal steps are
averaged as `deadline-aggregation` says (docs/compute.md: FedAvg by default, or FedNova, server/fednova.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from common.settings import DeadlineAggregation
from common.site_work import SiteWork
from server.replies import SortedReplies

SAFETY = 0.8  # a fifth of the deadline is left for a hospital's speed to vary from one round to the next


def steps_within(work: SiteWork, *, deadline: float, safety: float = SAFETY) -> int:
    """The local steps a hospital that reported `work` can take within `deadline` seconds: at least 1."""
    budget = deadline * safety - work.overhead_seconds
    fit = math.floor(budget / work.step_seconds) if work.local_steps > 0 and work.step_seconds > 0 else work.full_steps
    return max(1, min(work.full_steps, fit))


@dataclass
class LocalWorkScheduler:
    """Kept by the ServerApp for a run: every hospital's last work report, and this round's schedule."""

    deadline: float  # round-deadline; 0: no scheduling, every hospital trains local-epochs in full
    aggregation: DeadlineAggregation = "fedavg"  # deadline-aggregation: how the scheduled rounds are averaged
    safety: float = SAFETY
    known: dict[int, SiteWork] = field(default_factory=dict)  # node id -> its last report
    planned: dict[int, int] = field(default_factory=dict)  # node id -> this round's steps

    def plan(self, nodes: list[int]) -> dict[int, int]:
        """This round's local steps for the `nodes` measured so far (the others train in full)."""
        if self.deadline <= 0:
            self.planned = {}
        else:
            self.planned = {
                n: steps_within(self.known[n], deadline=self.deadline, safety=self.safety)
                for n in nodes
                if n in self.known
            }
        return dict(self.planned)

    def learn(self, replies: SortedReplies) -> None:
        self.known.update(replies.work)

    def round_facts(self, replies: SortedReplies, *, round_seconds: float) -> dict[str, Any]:
        """For results.json: the round's time at the server, and per institution its steps, times and capabilities."""
        sites = {}
        for node, work in sorted(replies.work.items()):
            name = replies.node_institutions.get(node, f"node-{node}")
            sites[name] = {**work.as_record(), "scheduled_steps": self.planned.get(node)}
        return {
            "round_seconds": round(round_seconds, 2),
            "round_deadline": self.deadline or None,
            "deadline_aggregation": self.aggregation if self.deadline > 0 else None,
            "sites": dict(sorted(sites.items())),
        }
