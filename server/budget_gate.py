"""The ServerApp's side of the budget service: report every DP event, skip hospitals that are out of budget.

The budget service is a second line of enforcement and the federation's audit
record; each hospital's own accountant stays the first line. So an unreachable
service never stops a round: events wait in an on-disk outbox and the hospitals
still refuse rounds they cannot afford.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.budget_client.connection import BudgetServiceError, BudgetView
from server.budget_client.events import BudgetEventClient
from server.replies import SortedReplies

log = logging.getLogger("flwr.fedcare.server")


@dataclass
class BudgetGate:
    client: BudgetEventClient
    run_id: int
    node_institutions: dict[int, str] = field(default_factory=dict)  # learnt from replies
    last_steps: dict[str, int] = field(default_factory=dict)  # institution -> steps of its last DP event

    @classmethod
    def connect(
        cls, *, url: str, token_file: Path, outbox_dir: Path, run_id: int, ca_certificate: Path | None = None
    ) -> BudgetGate:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"budget-token-file {token_file}: cannot read the aggregator token ({exc})") from exc
        if not token:
            raise ValueError(f"budget-token-file {token_file} is empty")
        # Short timeouts: an unreachable ledger must not stall a round; events wait in the outbox.
        client = BudgetEventClient(
            url, token, outbox_dir=outbox_dir, timeout=2.0, retries=1, ca_certificate=ca_certificate
        )
        return cls(client=client, run_id=run_id)

    def select(
        self, nodes: list[int], *, server_round: int, scheduled: dict[int, int] | None = None
    ) -> tuple[list[int], dict[str, str]]:
        """Nodes to send this round to, and {institution: why skipped} for the others.

        `scheduled`: the round's local steps per node (round-deadline); a node scheduled more steps than its
        last round is checked against that (`next_round_epsilon`), not against "a round like the last one"."""
        try:
            budgets: dict[str, BudgetView] = self.client.budgets()
        except BudgetServiceError as exc:
            log.warning(
                "round %d: budget service unavailable (%s); relying on each hospital's own limit", server_round, exc
            )
            return nodes, {}
        chosen, skipped = [], {}
        for node in nodes:
            name = self.node_institutions.get(node)
            view = budgets.get(name) if name else None
            steps = (scheduled or {}).get(node)
            nxt_eps = (
                next_round_epsilon(view, steps=steps, last_steps=self.last_steps.get(name or "")) if view else None
            )
            if view is not None and not _covers(view, nxt_eps):
                nxt = f"{nxt_eps:.3f}" if nxt_eps is not None else "more"
                reason = (
                    f"epsilon spent {view.epsilon_spent:.3f} of {view.epsilon_limit:g}; another round would reach {nxt}"
                )
                log.warning("round %d: skipping %s: %s", server_round, name, reason)
                skipped[name] = reason
                continue
            chosen.append(node)
        return chosen, skipped

    def learn(self, replies: SortedReplies) -> None:
        self.node_institutions.update(replies.node_institutions)
        self.last_steps.update({name: event.steps for name, event in replies.dp_events.items()})

    def report(self, replies: SortedReplies, *, server_round: int) -> None:
        """Post the round's events; undeliverable ones stay in the outbox for the next call."""
        # Resent earlier rounds first, in their order (a ClientApp killed after committing one never reported it):
        # the ledger keeps one event per (institution, run, round), answers the others `duplicate`, and checks each
        # new one's epsilon against the history before it.
        events = [e.for_ledger(institution=name) for name, earlier in replies.earlier_events.items() for e in earlier]
        events += [event.for_ledger(institution=name) for name, event in replies.dp_events.items()]
        if not events:
            return
        try:
            self.client.post_events(events)
        except BudgetServiceError as exc:
            log.warning(
                "round %d: %d DP event(s) kept in the outbox for later delivery: %s", server_round, len(events), exc
            )

    def pending_events(self) -> list[dict[str, Any]]:
        """Events waiting in the outbox (for the checkpoint)."""
        return self.client.outbox.waiting() if self.client.outbox is not None else []

    def keep_pending(self, events: list[dict[str, Any]]) -> int:
        """Put back events a checkpoint kept that the outbox no longer holds; returns how many. The ledger
        is idempotent on (run, round, institution), so one that was delivered meanwhile is harmless."""
        if self.client.outbox is None or not events:
            return 0
        waiting = {_key(e) for e in self.client.outbox.waiting()}
        missing = [e for e in events if _key(e) not in waiting]
        if missing:
            self.client.outbox.keep(missing)
        return len(missing)

    def close(self) -> None:
        try:
            self.client.flush_outbox()
        except BudgetServiceError as exc:
            log.warning("budget service: %d event(s) still waiting in the outbox: %s", self.client.pending(), exc)
        self.client.close()


def next_round_epsilon(view: BudgetView, *, steps: int | None, last_steps: int | None) -> float | None:
    """Epsilon after the next round, never below what it will cost: the ledger projects "a round like the last
    one"; a round scheduled more steps than that costs at most its share more, because RDP epsilon is concave
    in the number of steps (a minimum over orders of functions linear in the steps), so the increment is
    scaled up by steps / last_steps. A round of fewer steps keeps the ledger's figure (an over-estimate)."""
    nxt = view.epsilon_next_round
    if nxt is None or steps is None or not last_steps or steps <= last_steps:
        return nxt
    return view.epsilon_spent + (nxt - view.epsilon_spent) * steps / last_steps


def _covers(view: BudgetView, epsilon_next: float | None) -> bool:
    if epsilon_next is None or epsilon_next == view.epsilon_next_round:
        return view.can_cover_next_round
    return epsilon_next <= view.epsilon_limit


def _key(event: dict[str, Any]) -> tuple[str, str, str]:
    return str(event.get("run_id")), str(event.get("server_round")), str(event.get("institution"))
