"""A hospital's work report for the server's deadline scheduling: the steps it took, its times, its capabilities.

Measured on the round itself (no extra probe that would touch the data): the examples per second of this
round's training loop, and the device it ran on. The report is `common.site_work.SiteWork`.
"""

from __future__ import annotations

import math
import os

import torch

from client.training import TrainingOutcome
from common.site_work import SiteWork


def device_facts(device: torch.device) -> tuple[str, int]:
    """(name, memory in bytes) of the device training runs on; on CPU the host's RAM."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.name, int(props.total_memory)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not on every platform
        memory = 0
    return f"cpu ({os.cpu_count() or 1} cores)", int(memory)


def full_steps(*, num_examples: int, batch_size: int, epochs: int, dp: bool) -> int:
    """The steps `local-epochs` would take unscheduled: Opacus' Poisson batches with DP, the loader's without."""
    if dp:
        from client.dp_training import plan_round

        return plan_round(num_examples=num_examples, batch_size=batch_size, epochs=epochs)[1]
    return epochs * math.ceil(num_examples / batch_size)


def work_report(
    outcome: TrainingOutcome,
    *,
    full: int,
    batch_size: int,
    train_seconds: float,
    step_seconds: float,
    round_seconds: float,
    device: torch.device,
) -> SiteWork:
    name, memory = device_facts(device)
    taken = outcome.steps + outcome.skipped_steps
    return SiteWork(
        local_steps=outcome.steps,
        full_steps=full,
        train_seconds=round(train_seconds, 4),
        step_seconds=round(step_seconds, 5),
        round_seconds=round(round_seconds, 4),
        device=name,
        memory_bytes=memory,
        examples_per_second=round(taken * batch_size / train_seconds, 2) if train_seconds > 0 else 0.0,
    )
