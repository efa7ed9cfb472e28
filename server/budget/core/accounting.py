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
history, with results cached by (history, delta). Its cost grows with the
history: Opacus discretizes the privacy loss on a grid whose size grows with
the steps and shrinks with the noise (a noise multiplier of 1e-3 asked for
670 GiB). So the grid's size is worked out first, and a history that would
need more than `MAX_PRV_GRID_POINTS` is refused, as is any failure of the
accountants' arithmetic: an `AccountingError` (HTTP 422), never a crash.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from common.dp_event import ACCOUNTANTS, epsilon_of
from server.budget.core.errors import AccountingError

History = Mapping[tuple[float, float], int]  # (noise_multiplier, sample_rate) -> total steps

# Under-reporting beyond this relative tolerance is flagged.
RELATIVE_TOLERANCE = 1e-6
# The largest PRV grid the service computes: 1.5M points took 2.3 s and 5.3M points 7.4 s and 700 MB on these
# machines, and a write computes up to three epsilons. Larger histories are refused (the RDP accountant has no limit).
MAX_PRV_GRID_POINTS = 2_000_000
# Opacus's PRVAccountant.get_epsilon defaults, which epsilon_of uses: the grid is sized from them.
_PRV_EPS_ERROR = 0.01
_PRV_DELTA_ERROR_RATIO = 1e-3
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


def prv_grid_points(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """How many points Opacus's PRV accountant would discretize `history` on (as `PRVAccountant._get_domain`)."""
    with _opacus_lock:
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

        delta_error = delta * _PRV_DELTA_ERROR_RATIO
        half_width = compute_safe_domain_size(
            prvs=[PoissonSubsampledGaussianPRV(q, noise) for noise, q, _ in history],
            max_self_compositions=[steps for _, _, steps in history],
            eps_error=_PRV_EPS_ERROR,
            delta_error=delta_error,
        )
    total_steps = sum(steps for _, _, steps in history)
    mesh = _PRV_EPS_ERROR / math.sqrt(total_steps * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


@lru_cache(maxsize=1024)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    points = prv_grid_points(history, delta)
    if not points <= MAX_PRV_GRID_POINTS:
        raise AccountingError(
            f"the prv accountant would need {points:.3g} grid points for this history "
            f"(the service computes at most {MAX_PRV_GRID_POINTS:.3g}): the noise multiplier is too small or the "
            "steps too many for it; report this institution's events with the rdp accountant"
        )
    with _opacus_lock:  # epsilon_of imports Opacus
        return epsilon_of(list(history), accountant="prv", delta=delta)


def cumulative_epsilon(history: History, *, accountant: str, delta: float) -> float:
    """Epsilon of everything in `history` under the named accountant, at `delta`.

    Raises AccountingError, saying why, when the accountant cannot give a finite epsilon.
    """
    history = {key: steps for key, steps in history.items() if steps > 0}
    if not history:
        return 0.0
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")
    try:
        if accountant == "rdp":
            epsilon = _rdp_epsilon(history, delta)
        else:
            epsilon = _prv_epsilon(tuple(sorted((n, q, s) for (n, q), s in history.items())), delta)
    except AccountingError:
        raise
    except Exception as exc:  # Opacus's numerics on extreme values: ZeroDivision, Overflow, Memory, RuntimeError...
        raise AccountingError(
            f"the {accountant} accountant failed on this history: {type(exc).__name__}: {exc}"
        ) from exc
    if not math.isfinite(epsilon):
        raise AccountingError(f"the {accountant} accountant gives epsilon {epsilon} for this history, not a number")
    return epsilon


def with_event(history: History, *, noise_multiplier: float, sample_rate: float, steps: int) -> dict:
    out = dict(history)
    key = (noise_multiplier, sample_rate)
    out[key] = out.get(key, 0) + steps
    return out


def under_reported(*, reported: float, recomputed: float) -> bool:
    return reported < recomputed * (1 - RELATIVE_TOLERANCE) - 1e-12
