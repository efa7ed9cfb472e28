"""The noise multiplier that makes a whole run spend its target epsilon, worked out once per run.

Opacus' `get_noise_multiplier` searches over epsilon (about 0.3 s of CPU on these machines), and its
answer depends only on the run's settings and this hospital's sample rate: the same in every round.
So the answer is kept in the hospital's state directory, keyed by every input. A stale or damaged
entry can only cost the search again: the file holds no spending (the accountant does), and a value
that does not match its key is never used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.atomic import write_json_atomic

PLANS_FILE = "noise-plans.json"
MAX_PLANS = 64  # one per (run settings, sample rate); old ones drop off
log = logging.getLogger("flwr.fedcare.client")


def _key(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> str:
    return json.dumps([accountant, repr(float(target_epsilon)), repr(float(delta)), repr(float(sample_rate)), steps])


def _read(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and v > 0}


def run_noise_multiplier(
    *, state_dir: Path, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Opacus' noise multiplier for `steps` steps in all at `sample_rate` reaching `target_epsilon`."""
    path = Path(state_dir) / PLANS_FILE
    key = _key(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant)
    plans = _read(path)
    if key in plans:
        return plans[key]
    from opacus.accountants.utils import get_noise_multiplier  # lazy: Opacus only where DP is on

    noise = float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
    plans = dict(list(plans.items())[-(MAX_PLANS - 1) :]) | {key: noise}
    try:
        write_json_atomic(path, plans)
    except OSError as exc:  # a read-only state dir costs only the search next round
        log.warning("could not keep the run's noise plan in %s: %s", path, exc)
    return noise
