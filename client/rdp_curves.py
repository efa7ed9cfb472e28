"""The hospital's RDP epsilon from one-step curves kept in its state directory.

A hospital recomputes its cumulative epsilon in every message, over everything it ever spent. Under the RDP
accountant that is Σ steps × the one-step RDP curve of each (noise multiplier, sample rate), then Opacus'
conversion to (epsilon, delta). The curve is what costs: Opacus' `compute_rdp` over its 151 orders took 0.1 to
0.25 s per setting per message here, and every run with its own noise adds a setting, so a hospital that ran
many runs paid for all of them in every message. The budget service keeps the same curves in memory
(server/budget/core/accounting.py); a ClientApp is a fresh process per message, so the hospital keeps them on
disk, keyed by the exact inputs and Opacus' orders.

A damaged or stale entry costs only a recomputation: one that is not a curve of the right length is ignored.
The curves hold no spending (the accountant file does), and the budget service recomputes every event's epsilon
itself and flags a hospital that reports less, so an edited curve cannot lower what the federation sees.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.atomic import write_json_atomic
from common.dp_event import steps_by_setting

CURVES_FILE = "rdp-curves.json"
MAX_CURVES = 256  # one per (noise, sample rate); the oldest drop off
log = logging.getLogger("flwr.fedcare.client")


def _orders() -> list[float]:
    from opacus.accountants import RDPAccountant  # lazy: Opacus only where DP is on

    return [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


def _key(noise: float, rate: float, orders: list[float]) -> str:
    return json.dumps([repr(float(noise)), repr(float(rate)), [repr(a) for a in orders]])


def _parse(raw: object, length: int) -> np.ndarray | None:
    """A stored curve: a list of `length` numbers >= 0 (None stands for infinity, which JSON cannot hold)."""
    if not isinstance(raw, list) or len(raw) != length:
        return None
    values = [math.inf if v is None else v for v in raw]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
        return None  # NaN fails `>= 0` too
    return np.asarray(values, dtype=float)


def _read(path: Path) -> dict[str, object]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def rdp_epsilon(history: Iterable[tuple[float, float, int]], *, delta: float, state_dir: Path) -> float:
    """Epsilon of a (noise, sample rate, steps) history under Opacus' RDP accountant: `epsilon_of`'s value."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    steps = steps_by_setting(history)
    if not steps:
        return 0.0
    orders, path = _orders(), Path(state_dir) / CURVES_FILE
    stored, added = _read(path), {}
    total = np.zeros(len(orders))
    for (noise, rate), n in steps.items():
        key = _key(noise, rate, orders)
        curve = _parse(stored.get(key), len(orders))
        if curve is None:
            curve = np.asarray(compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=orders), dtype=float)
            added[key] = [None if math.isinf(v) else float(v) for v in curve]
        total += n * curve
    if added:
        kept = {k: v for k, v in stored.items() if k not in added}
        kept = dict(list(kept.items())[-(MAX_CURVES - len(added)) :]) if len(added) < MAX_CURVES else {}
        try:
            write_json_atomic(path, kept | added)
        except OSError as exc:  # a read-only state dir costs only the computation next time
            log.warning("could not keep the RDP curves in %s (%s); they are computed again next message", path, exc)
    epsilon, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(epsilon)
