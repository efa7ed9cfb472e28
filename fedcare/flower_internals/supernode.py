"""The SuperNode's side: its fixed waits, its heartbeat, and what it does when the SuperLink turns it away."""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedcare.flower_internals.guard import (
    _PULL_HELPERS,
    ACTIVATION_REFUSED,
    FLEET_POLL_SLEEP,
    HEARTBEAT_MODULES,
    REPLY_WAIT_SLEEP,
    REVOKED_DETAILS,
    SUPERLINK_MIN_HEARTBEAT,
    _modules,
    _require_pinned,
)
from fedcare.flower_internals.orphaned_tasks import fail_orphaned_tasks, unfinished_tasks
from fedcare.flower_internals.reply_gate import NoReplyLeft, ReplyGate


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
    heartbeat_interval: the interval the node announces and beats at [30]; the SuperLink marks it offline
    OFFLINE_AFTER intervals after its last beat, so a dead node is noticed within 20 s instead of 60 s (the
    SuperLink accepts no less than 10 s). A node marked offline gets no new message, and the SuperLink answers
    for the ones it holds ("Node Unavailable"), so a round stops waiting for it.
    refusal_patience: how long the SuperLink may refuse to activate the node (2004) before it counts as revoked;
    longer than a crashed session of the same key stays online (OFFLINE_AFTER x heartbeat_interval), which
    the SuperLink answers with the same code [Flower exits at the first refusal].
    reconnect_cap: the longest wait between reconnection attempts [20].
    content_patience: how long a reply may wait for its objects when no other reply to its message comes [no
    end]; then it is dropped, unsent (`reply_gate.py`: a ClientApp killed mid-upload wedged the node for good).
    """

    fleet_poll: float = 0.05
    fleet_poll_idle: float = 1.0
    busy_window: float = 30.0
    reply_wait: float = 0.01
    pull_backoff: float = 0.02
    pull_backoff_cap: float = 0.1
    heartbeat_interval: float = 10.0
    refusal_patience: float = 25.0
    reconnect_cap: float = 2.0
    content_patience: float = 60.0  # s a reply's objects may take to arrive after the reply itself


class _RetunedSleeps:
    """Stands in for the `time` module inside start_client_internal: the two fixed sleeps become the
    configured waits (the idle poll fast or slow by how long ago the last message came); every other call
    goes to `time` itself."""

    def __init__(self, waits: SuperNodeWaits) -> None:
        # Idle from the start: a node warming up (and the SuperLink that answers it) has better use for the CPU
        # than 20 empty polls a second, which cost 0.33 CPU-s/s of the SuperLink with three nodes starting.
        self.waits, self.last_message = waits, float("-inf")
        self.poll_started = float("-inf")

    def sleep(self, seconds: float) -> None:
        if float(seconds) == FLEET_POLL_SLEEP:
            busy = time.monotonic() - self.last_message < self.waits.busy_window
            interval = self.waits.fleet_poll if busy else self.waits.fleet_poll_idle
            # Between the starts of two polls: fedcare's SuperLink holds an empty poll until a message comes
            # (superlink.py), and a node that waited there already has no reason to wait again.
            seconds = max(0.0, interval - (time.monotonic() - self.poll_started))
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

    gate, push = ReplyGate(patience=waits.content_patience), sci._push_messages
    pushing: dict[str, object] = {}  # the main loop's object store, `send` and `push_object`, from a push stage

    def pulled(*args: object, **kwargs: object) -> int | None:
        state = kwargs.get("state", args[0] if args else None)
        known = unfinished_tasks(state)
        sleeps.poll_started = time.monotonic()
        run_id = pull_and_store(*args, **kwargs)
        if run_id is None:
            fail_orphaned_tasks(state, known=known)
            if pushing and gate.has_complete(state, pushing["object_store"]):  # reply_gate.py says why
                push_complete_replies(state=state, **pushing)  # type: ignore[arg-type]
        else:
            sleeps.last_message = time.monotonic()
            if on_message is not None:
                on_message()
        return run_id

    def push_complete_replies(*, state: object, object_store: object, send: object, push_object: object) -> None:
        pushing.update(object_store=object_store, send=send, push_object=push_object)
        with contextlib.suppress(NoReplyLeft):
            gated = gate.state_for(state, object_store)
            push(state=gated, object_store=object_store, send=send, push_object=push_object)

    sci.time, sci._pull_and_store_message, sci._push_messages = sleeps, pulled, push_complete_replies
    tune_object_pull_backoff(initial=waits.pull_backoff, cap=waits.pull_backoff_cap)
    tune_heartbeat(waits.heartbeat_interval)


def tune_object_pull_backoff(*, initial: float, cap: float) -> None:
    # This module alone: `_modules()` would load the SuperNode's SQL state (SQLAlchemy, 0.5-2 s) into every child.
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    for name in _PULL_HELPERS:
        defaults = getattr(utils, name).__kwdefaults__
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap


def tune_heartbeat(interval: float) -> None:
    """Announce, and beat at, `interval` seconds (`SuperNodeWaits.heartbeat_interval` says why)."""
    if interval < SUPERLINK_MIN_HEARTBEAT:
        raise ValueError(
            f"heartbeat interval {interval} s: the SuperLink refuses less than {SUPERLINK_MIN_HEARTBEAT} s"
        )
    for name in HEARTBEAT_MODULES:
        importlib.import_module(name).HEARTBEAT_DEFAULT_INTERVAL = interval


@dataclass(frozen=True)
class Refusal:
    """The SuperLink turns this node away: its key was removed while the node ran (`revoked`), or it refused
    to activate the node for `seconds` (an unknown key: revoked, or never registered)."""

    revoked: bool
    flower_error: str  # what the SuperLink answered
    seconds: float = 0.0


def _refusal(err: Exception, *, since: list[float]) -> Refusal | None:
    code, details = getattr(err, "code", None), getattr(err, "details", None)
    if not (callable(code) and callable(details)):
        return None
    import grpc
    from flwr.supercore.error import FlowerError

    if code() == grpc.StatusCode.UNAUTHENTICATED and details() == REVOKED_DETAILS:
        return Refusal(revoked=True, flower_error=f"UNAUTHENTICATED: {REVOKED_DETAILS}")
    flower = FlowerError.from_json(details())
    if flower is None or flower.code != ACTIVATION_REFUSED:
        return None
    since[:] = since or [time.monotonic()]
    return Refusal(
        revoked=False, flower_error=f"[code: {flower.code}] {flower.message}", seconds=time.monotonic() - since[0]
    )


def stop_when_refused(waits: SuperNodeWaits, on_refused: Callable[[Refusal], None]) -> None:
    """Call `on_refused` (which should end the process) when the SuperLink turns this node away for good.

    Flower 1.39 exits as after Ctrl-C (code 0, "terminated gracefully") when its key is removed while it
    runs, and with code 1 at the first refused activation, which is also the answer while a crashed session
    of the same key is still counted online. Here an activation refused is retried for
    `waits.refusal_patience` seconds first, and reconnections wait at most `waits.reconnect_cap` seconds.
    """
    _require_pinned()
    from flwr.supercore.retry import exponential

    sci = _modules()["start_client_internal"]
    make = sci._make_fleet_connection_retry_invoker

    def watched(*args: object, **kwargs: object) -> object:
        invoker = make(*args, **kwargs)
        giveup, since = invoker.should_giveup, []
        invoker.wait_gen_factory = lambda: exponential(max_delay=waits.reconnect_cap)  # type: ignore[arg-type]

        def should_giveup(err: Exception) -> bool:
            refusal = _refusal(err, since=since)
            if refusal is not None and not refusal.revoked and refusal.seconds < waits.refusal_patience:
                return False  # perhaps this key's crashed session, still counted online: try again
            if refusal is not None:
                on_refused(refusal)
            return bool(giveup(err))

        invoker.should_giveup = should_giveup
        return invoker

    sci._make_fleet_connection_retry_invoker = watched


def run_flower_supernode(argv: list[str]) -> None:
    """Flower's own `flower-supernode` main, with `argv` as its command line."""
    sys.argv = ["flower-supernode", *argv]
    _modules()["flower_supernode"].flower_supernode()
