"""Who is missing from a round and why: the ServerApp's loop goes on with the survivors while a quorum remains.

A round starts once at least `min-nodes` hospitals are connected (by default a majority of the federation,
`common.settings.quorum`), so losing a minority never ends a run. A hospital the run has heard from and
whose node is gone is listed per round in results.json under `dropped`, with the reason and, when it left
during the round, how many seconds after the round's message went out the SuperLink reported it (its
node missed its heartbeats: within 20 s, `fedcare.flower_internals.SuperNodeWaits`). A node restarted
with the same kit keeps its node id; it takes part again from the next round that finds it connected,
and the round says so under `rejoined`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp import Grid

from common.institution import UNNAMED_PREFIX, institution_name
from server.messaging import Dropout, wait_for_nodes
from server.replies import SortedReplies

log = logging.getLogger("flwr.fedcare.server")
DROPPED_OUT = "dropped-out"  # SecAgg+'s rejection code for a hospital that missed a stage
NOT_CONNECTED = "not connected when the round started: its node stopped, or the SuperLink missed its heartbeats"


class QuorumLost(TimeoutError):
    """Fewer hospitals than `min-nodes` stayed connected: the run cannot go on."""


@dataclass
class Attendance:
    """Node ids and institutions the run has heard from, and since which round each missing one is gone."""

    institutions: dict[int, str] = field(default_factory=dict)  # node id -> institution, from replies
    missing_since: dict[int, int] = field(default_factory=dict)  # node id -> first round it missed

    def _name(self, node: int) -> str:
        return institution_name(self.institutions.get(node), node_id=node)

    def wait_for_quorum(self, grid: Grid, *, minimum: int, timeout: float) -> list[int]:
        """The connected nodes once at least `minimum` are; `QuorumLost` naming who is gone after `timeout`."""
        try:
            return wait_for_nodes(grid, minimum=minimum, timeout=timeout)
        except TimeoutError as exc:
            gone = ", ".join(f"{self._name(n)} (since round {r})" for n, r in sorted(self.missing_since.items()))
            raise QuorumLost(
                f"{exc}: min-nodes ({minimum}, a quorum) is no longer met"
                + (f"; gone: {gone}" if gone else "")
                + "; restart their nodes (`fedcare node start`), or lower min-nodes"
            ) from exc

    def at_start(self, nodes: list[int], *, server_round: int) -> dict[str, dict[str, Any]]:
        """Hospitals heard from before whose node the SuperLink does not list now."""
        absent = {}
        for node in sorted(set(self.institutions) - set(nodes)):
            since = self.missing_since.setdefault(node, server_round)
            absent[self._name(node)] = {"reason": NOT_CONNECTED, "since_round": since, "detected_after_s": None}
        if absent:
            log.warning(
                "round %d: going on with %d hospital(s); absent: %s",
                server_round,
                len(nodes),
                ", ".join(f"{who} (since round {a['since_round']})" for who, a in absent.items()),
            )
        return absent

    def after_round(
        self,
        *,
        server_round: int,
        absent: dict[str, dict[str, Any]],
        dropouts: list[Dropout],
        replies: SortedReplies,
    ) -> dict[str, Any]:
        """results.json's `dropped` (absent at the start, or gone during the round) and `rejoined` for a round."""
        self.institutions.update(replies.node_institutions)
        for r in replies.rejections:  # SecAgg+ names a hospital that missed a stage from its earlier replies
            if not r.institution.startswith(UNNAMED_PREFIX):
                self.institutions.setdefault(r.node_id, r.institution)
        dropped = dict(absent)
        gone: set[int] = set()
        for d in dropouts:
            gone.add(d.node_id)
            dropped[self._name(d.node_id)] = {"reason": d.reason, "detected_after_s": d.detected_after_s}
        for r in replies.rejections:
            if r.code == DROPPED_OUT:  # SecAgg+: it missed a stage of the protocol
                gone.add(r.node_id)
                dropped.setdefault(self._name(r.node_id), {"reason": r.reason, "detected_after_s": None})
        for node in sorted(gone - set(self.missing_since)):
            self.missing_since[node] = server_round
            why = dropped[self._name(node)]
            after = "" if why["detected_after_s"] is None else f" ({why['detected_after_s']} s into the round)"
            log.warning("round %d: %s dropped out: %s%s", server_round, self._name(node), why["reason"], after)
        rejoined = sorted(n for n in self.missing_since if n in replies.node_institutions and n not in gone)
        for node in rejoined:
            log.info(
                "round %d: %s is back (absent since round %d)", server_round, self._name(node), self.missing_since[node]
            )
            del self.missing_since[node]
        return {"dropped": dict(sorted(dropped.items())), "rejoined": [self._name(n) for n in rejoined]}
