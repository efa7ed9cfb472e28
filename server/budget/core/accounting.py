"""Recomputing epsilon from stored DP events, fast enough to do on every write.

The reference is `common.dp_event.epsilon_of` (Opacus), which the hospitals
themselves use. Two exact shortcuts make it cheap here:

* Composition does not depend on order, so the events of an institution are
  summarized as {(noise, sample_rate): total steps}.
* RDP is additive: the RDP curve of `steps` steps is `steps` times that of one
  step. The one-step curve of each (noise, sample_rate) pair is computed once
  with Opacus and cached, so an RDP epsilon costs a dot product and Opacus's
  own RDP-to-(epsilon, delta) conversion. The result equals `epsilon_of` to
  floating-point rounding (tests check it).

PRV has no such shortcut: it goes through `epsilon_of` on the summarized
history, with results cached by (history, delta).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from common.dp_event import ACCOUNTANTS, epsilon_of

History = Mapping[tuple[float, float], int]  # (noise_multiplier, sample_rate) -> total steps

# Under-reporting beyond this relative tolerance is flagged.
RELATIVE_TOLERANCE = 1e-6
# One thread at a time imports and calls Opacus: two threads importing it at once can deadlock
# on its circular imports, and its analysis code was not written with threads in mind.
_opacus_lock = threading.RLock()


_warm = threading.Event()


def warm_up() -> None:
    """Import Opacus (and torch) ahead of the first write; seconds, once per process."""
    _one_step_rdp(1.0, 0.01)
    _warm.set()


def is_warm() -> bool:
    return _warm.is_set()


@lru_cache(maxsize=1)
def _rdp_orders() -> tuple[float, ...]:
    with _opacus_lock:
        from opacus.accountants import RDPAccountant

        return tuple(RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=4096)
def _one_step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    with _opacus_lock:
        from opacus.accountants.analysis.rdp import compute_rdp

        curve = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(_rdp_orders()))
    curve = np.asarray(curve, dtype=float)
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(history: History, delta: float) -> float:
    rdp = sum(steps * _one_step_rdp(noise, q) for (noise, q), steps in history.items())
    from opacus.accountants.analysis.rdp import get_privacy_spent  # imported by _one_step_rdp, under the lock

    eps, _ = get_privacy_spent(orders=list(_rdp_orders()), rdp=rdp, delta=delta)
    return float(eps)


@lru_cache(maxsize=1024)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    with _opacus_lock:  # epsilon_of imports Opacus
        return epsilon_of(list(history), accountant="prv", delta=delta)


def cumulative_epsilon(history: History, *, accountant: str, delta: float) -> float:
    """Epsilon of everything in `history` under the named accountant, at `delta`."""
    history = {key: steps for key, steps in history.items() if steps > 0}
    if not history:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    if accountant == "prv":
        return _prv_epsilon(tuple(sorted((n, q, s) for (n, q), s in history.items())), delta)
    raise ValueError(f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")


def with_event(history: History, *, noise_multiplier: float, sample_rate: float, steps: int) -> dict:
    out = dict(history)
    key = (noise_multiplier, sample_rate)
    out[key] = out.get(key, 0) + steps
    return out


def under_reported(*, reported: float, recomputed: float) -> bool:
    return reported < recomputed * (1 - RELATIVE_TOLERANCE) - 1e-12
