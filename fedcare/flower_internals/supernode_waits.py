"""The SuperNode's fixed waits, retuned in-process before Flower's own `flower_supernode()` main runs:
`time.sleep(3)` between idle fleet polls, `time.sleep(0.5)` while it waits for a ClientApp's reply, and the
object-pull back-off (1 s doubling to 10 s)."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedcare.flower_internals.pinned import (
    _PULL_HELPERS,
    FLEET_POLL_SLEEP,
    REPLY_WAIT_SLEEP,
    _modules,
    _require_pinned,
)


@dataclass(frozen=True)
class SuperNodeWaits:
    """The SuperNode's waits, in seconds (Flower 1.39's fixed values in brackets).

    fleet_poll: between empty PullMessages to the SuperLink while busy, i.e. within `busy_window` seconds
    of the last message [3]; fleet_poll_idle: after that. Each poll costs the SuperLink about 4 ms of CPU
    (TLS, node authentication): 10 hospitals at 0.05 s keep 60 % of one of its cores busy, at 1 s 5 %
    (bench/poll_cost.py, docs/benchmarks.md). Runs keep a node busy, so rounds see the fast poll and an
    idle federation the slow one; only a run's first message waits up to fleet_poll_idle.
    reply_wait: between checks for the ClientApp's reply [0.5]; local, costs nothing measurable.
    pull_backoff, pull_backoff_cap: first and largest back-off when a message's objects are not uploaded
    yet [1, 10]; a fast poll meets that often, because the SuperLink hands a message out before its upload ends.
    The cap bounds how long a pull oversleeps an upload that just ended (a retry costs one request per object,
    and only while an upload is in flight); at 0.5 s it could add up to half a second to each exchange.
    """

    fleet_poll: float = 0.05
    fleet_poll_idle: float = 1.0
    busy_window: float = 30.0
    reply_wait: float = 0.01
    pull_backoff: float = 0.02
    pull_backoff_cap: float = 0.1


class _RetunedSleeps:
    """Stands in for the `time` module inside start_client_internal: the two fixed sleeps become the
    configured waits (the idle poll fast or slow by how long ago the last message came); every other call
    goes to `time` itself."""

    def __init__(self, waits: SuperNodeWaits) -> None:
        self.waits, self.last_message = waits, time.monotonic()

    def sleep(self, seconds: float) -> None:
        if float(seconds) == FLEET_POLL_SLEEP:
            busy = time.monotonic() - self.last_message < self.waits.busy_window
            seconds = self.waits.fleet_poll if busy else self.waits.fleet_poll_idle
        elif seconds == REPLY_WAIT_SLEEP:
            seconds = self.waits.reply_wait
        time.sleep(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def tune_supernode_waits(waits: SuperNodeWaits, *, on_message: Callable[[], None] | None = None) -> None:
    """Retune this process's SuperNode waits; call before `run_flower_supernode`.

    `on_message` is called each time the SuperNode has stored a message (its task is then claimable): the
    warm executor is told at once instead of polling the runtime API.
    """
    _require_pinned()
    sci = _modules()["start_client_internal"]
    sleeps = _RetunedSleeps(waits)
    pull_and_store = sci._pull_and_store_message

    def pulled(*args: object, **kwargs: object) -> int | None:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            sleeps.last_message = time.monotonic()
            if on_message is not None:
                on_message()
        return run_id

    sci.time, sci._pull_and_store_message = sleeps, pulled
    tune_object_pull_backoff(initial=waits.pull_backoff, cap=waits.pull_backoff_cap)


def tune_object_pull_backoff(*, initial: float, cap: float) -> None:
    # This module alone: `_modules()` would load the SuperNode's SQL state (SQLAlchemy, 0.5-2 s) into every child.
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    for name in _PULL_HELPERS:
        defaults = getattr(utils, name).__kwdefaults__
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap


def run_flower_supernode(argv: list[str]) -> None:
    """Flower's own `flower-supernode` main, with `argv` as its command line."""
    sys.argv = ["flower-supernode", *argv]
    _modules()["flower_supernode"].flower_supernode()
