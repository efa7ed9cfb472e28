"""Deadline scheduling: each hospital gets the steps that fit, the slow one fewer, never 0 or more than in full;
and the budget check before a round never projects less than the scheduled round will cost."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from common.site_work import SiteWork
from server.budget_client.connection import BudgetView
from server.budget_gate import next_round_epsilon
from server.local_work import LocalWorkScheduler, steps_within
from server.replies import SortedReplies


def _work(*, seconds_per_step: float, overhead: float = 1.0, steps: int = 20, full: int = 20) -> SiteWork:
    train = seconds_per_step * steps
    return SiteWork(steps, full, train, seconds_per_step, train + overhead, "cpu", 1, 1.0)


def test_a_slow_site_gets_the_steps_that_fit_and_a_fast_one_trains_in_full() -> None:
    fast, slow = _work(seconds_per_step=0.1), _work(seconds_per_step=0.4)  # 2 s and 8 s of training
    # deadline 5 s x safety 0.8 = 4 s, less 1 s overhead: 3 s of training
    assert steps_within(fast, deadline=5.0) == 20  # 30 fit; capped at local-epochs
    assert steps_within(slow, deadline=5.0) == 7  # floor(3 / 0.4)
    assert steps_within(slow, deadline=0.5) == 1  # never 0: the overhead alone exceeds the deadline
    assert steps_within(_work(seconds_per_step=0.1, steps=0), deadline=5.0) == 20  # no measured step yet


def test_the_scheduler_plans_only_measured_nodes_and_records_each_sites_times() -> None:
    scheduler = LocalWorkScheduler(deadline=5.0)
    assert scheduler.plan([1, 2, 3]) == {}  # the first round: nobody measured, everyone trains in full
    replies = SortedReplies(
        node_institutions={1: "fast", 2: "slow"}, work={1: _work(seconds_per_step=0.1), 2: _work(seconds_per_step=0.4)}
    )
    scheduler.learn(replies)
    assert scheduler.plan([1, 2, 3]) == {1: 20, 2: 7}
    facts = scheduler.round_facts(replies, round_seconds=9.876)
    assert facts["round_seconds"] == 9.88 and facts["round_deadline"] == 5.0
    assert facts["deadline_aggregation"] == "fedavg"  # the default; results.json says how the round was averaged
    assert facts["sites"]["slow"]["scheduled_steps"] == 7 and facts["sites"]["slow"]["train_seconds"] == 8.0
    assert LocalWorkScheduler(deadline=0).plan([1, 2]) == {}  # round-deadline 0: no schedule at all


def _epsilon(history: list[tuple[float, float, int]]) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta=1e-5)


@pytest.mark.parametrize("scheduled", [5, 20, 40, 90])
def test_the_budget_check_projects_at_least_the_scheduled_rounds_epsilon(scheduled: int) -> None:
    """The ledger projects 'a round like the last one' (20 steps); a round scheduled more steps is scaled up,
    which RDP's concavity in the steps makes an upper bound; one of fewer keeps the ledger's upper bound."""
    sigma, q, last = 1.1, 0.05, 20
    history = [(sigma, q, 40), (sigma, q, last)]
    spent = _epsilon(history)
    like_last = _epsilon([*history, (sigma, q, last)])
    view = BudgetView(1, "h", spent, 10.0, 10.0 - spent, 1e-5, 2, None, like_last, True, 0)
    projected = next_round_epsilon(view, steps=scheduled, last_steps=last)
    assert projected is not None
    assert projected >= _epsilon([*history, (sigma, q, scheduled)]) - 1e-9
    assert next_round_epsilon(view, steps=None, last_steps=last) == like_last
