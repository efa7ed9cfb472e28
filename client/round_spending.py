"""What a DP round costs a hospital, committed to its accountant before any training.

The round's spending is written to the crash-safe accountant first, so a hospital that dies mid-round has
counted it (over-count, never under-count); a round the hospital's own limit cannot afford is refused here,
before a single step.
"""

from __future__ import annotations

import logging

from client.accountant_state import HospitalAccountant
from client.refusals import RoundRefused
from common.dp_event import DPEvent
from common.round_config import RoundConfig
from common.settings import NodeSettings

log = logging.getLogger("flwr.fedcare.client")


def commit_round_spending(
    accountant: HospitalAccountant,
    *,
    config: RoundConfig,
    node: NodeSettings,
    institution: str,
    run_id: int,
    num_examples: int,
    max_steps: int | None,
) -> DPEvent:
    """The round's DP event, committed: its noise (the run's, chosen once for a target epsilon), sample rate
    and scheduled steps; refused (`budget-exhausted`) when it would pass the hospital's epsilon limit."""
    from client.dp_training import plan_round
    from client.noise_plan import run_noise_multiplier

    c = config
    sample_rate, steps = plan_round(  # the scheduled steps: the loop takes exactly these (dp_training)
        num_examples=num_examples, batch_size=c.batch_size, epochs=c.local_epochs, max_steps=max_steps
    )
    full = plan_round(num_examples=num_examples, batch_size=c.batch_size, epochs=c.local_epochs)[1]
    accountant_name, delta = c.accountant, c.delta
    if c.target_epsilon > 0:
        # Chosen once for the whole run's planned steps: re-targeting every round overshoots.
        assert node.state_dir is not None  # filled in by NodeSettings
        noise = run_noise_multiplier(
            state_dir=node.state_dir,
            target_epsilon=c.target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=full * c.num_rounds,  # the run's unscheduled plan: a shorter round only spends less
            accountant=accountant_name,
        )
    else:
        noise = c.noise_multiplier
    projected = accountant.projected_epsilon(
        noise_multiplier=noise, sample_rate=sample_rate, steps=steps, accountant=accountant_name, delta=delta
    )
    limit = node.epsilon_limit
    if limit is not None and projected > limit:
        spent = accountant.epsilon(accountant=accountant_name, delta=delta)
        raise RoundRefused(
            code="budget-exhausted",
            reason=(
                f"this round would raise epsilon from {spent:.3f} to {projected:.3f}, above the limit {limit:g}; "
                "no training done, nothing sent"
            ),
            institution=institution,
            details={"epsilon": spent, "epsilon-limit": limit},
        )
    event = DPEvent(
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant_name,
        epsilon=projected,
        delta=delta,
        run_id=run_id,
        server_round=c.server_round,
    )
    accountant.commit(event)
    log.info(
        "[%s] round %s: epsilon %.3f after this round (committed to %s)",
        institution,
        c.server_round,
        projected,
        accountant.path,
    )
    return event
