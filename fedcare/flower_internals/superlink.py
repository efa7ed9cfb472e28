"""The SuperLink's side: an empty pull waits for its message (a long poll) instead of coming back at once.

Flower 1.39's SuperNodes and ServerApps poll the SuperLink, and a poll answered "nothing yet" costs it about
5 ms of CPU (TLS, node authentication, SQLAlchemy), the asker too. To meet a message within tens of
milliseconds, three hospitals polled 60 times a second: 0.45 CPU-s/s of the SuperLink and 0.15 of the
SuperNodes on a federation that sat idle (bench/round_latency.py's idle figures), a third of the CPU of a
two-core coordinator's round. Here an empty pull is held for up to `hold` seconds and answered the moment
something is stored for its asker: a node's next message for a Fleet `PullMessages`, a run's next reply for
the ServerApp's `PullMessages`, a submitted run for the ServerApp executor's `AcquireTask`. Nothing changes
on the wire, so a stock SuperNode or ServerApp works against this SuperLink as before (its polls just come
back later when there is nothing to say), and fedcare's SuperNode notices the hold and polls again at once
(`supernode.py`).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from fedcare.flower_internals.guard import _require_pinned

FLEET_HANDLERS = "flwr.server.superlink.fleet.message_handler.message_handler"  # the Fleet servicer calls through it
RUNTIME_HANDLERS = "flwr.superlink.servicer.runtime.runtime_handlers"  # the ServerApp's runtime API calls through it
LINK_STATES = (
    ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState"),
    ("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState"),
)


@dataclass
class Bells:
    """One counter per key (a node's inbox, a run's replies), rung when something arrives for it; a waiter holds
    the count it saw before it last looked, so a message stored between its look and its wait is not missed.

    A message is stored before its objects are uploaded (Flower's PushMessages, then one PushObject each); rung
    at once, its receiver would find the objects missing and pull them again and again with back-off. So a
    message rings once its last object is in (`ring_when_uploaded`, `uploaded`), or after `upload_patience`
    seconds, when the receiver's back-off takes over as before.
    """

    upload_patience: float = 30.0
    _rung: dict[Hashable, int] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _uploads: list[tuple[Hashable, set[str], float]] = field(default_factory=list)  # bell, objects missing, since

    def count(self, key: Hashable) -> int:
        with self._changed:
            return self._rung.get(key, 0)

    def ring(self, key: Hashable) -> None:
        with self._changed:
            self._ring(key)

    def _ring(self, key: Hashable) -> None:
        self._rung[key] = self._rung.get(key, 0) + 1
        self._changed.notify_all()

    def wait(self, key: Hashable, *, seen: int, timeout: float) -> bool:
        """True once `key` was rung after its count was `seen`; False after `timeout` seconds without."""
        with self._changed:
            return self._changed.wait_for(lambda: self._rung.get(key, 0) != seen, timeout=timeout)

    def ring_when_uploaded(self, key: Hashable, missing: list[str]) -> None:
        """Ring `key` once every object in `missing` was `uploaded` (at once when none is missing)."""
        with self._changed:
            if missing:
                self._uploads.append((key, set(missing), time.monotonic()))
            else:
                self._ring(key)

    def uploaded(self, object_id: str) -> None:
        with self._changed:
            stale = time.monotonic() - self.upload_patience
            waiting = []
            for key, missing, since in self._uploads:
                missing.discard(object_id)
                if missing and since > stale:
                    waiting.append((key, missing, since))
                else:
                    self._ring(key)
            self._uploads = waiting


BELLS = Bells()


def node_inbox(node_id: int) -> tuple[str, int]:
    return ("inbox", node_id)


def run_replies(run_id: int) -> tuple[str, int]:
    return ("replies", run_id)


REPLY_RECHECK = 0.1  # s: how often a held reply pull looks again without a bell (Flower's ServerApp polled so)
NEW_RUNS = ("runs", 0)  # rung when a run is submitted: its ServerApp task waits for an executor to claim it


def _held(
    pull: Callable[..., Any],
    *,
    key: Callable[..., Hashable],
    hold: float,
    bells: Bells,
    empty: Callable[[Any], bool],
    recheck: float | None = None,
) -> Callable[..., Any]:
    """`pull`, whose answer may be `empty` when nothing waits: asked again when `key`'s bell rings (and every
    `recheck` seconds, if given) until it has something, or the empty answer given after `hold` seconds."""

    def held(*args: Any, **kwargs: Any) -> Any:
        bell, deadline = key(*args, **kwargs), time.monotonic() + hold
        while True:
            seen = bells.count(bell)
            response = pull(*args, **kwargs)
            left = deadline - time.monotonic()
            if not empty(response) or left <= 0:
                return response
            bells.wait(bell, seen=seen, timeout=left if recheck is None else min(left, recheck))

    held.__wrapped__ = pull  # type: ignore[attr-defined]
    return held


def _no_messages(response: Any) -> bool:
    return len(response.messages_list) == 0


def _no_task(response: Any) -> bool:
    return not response.token


def _ringing(store: Callable[..., tuple[bool, list[str]]], *, bells: Bells) -> Callable[..., tuple[bool, list[str]]]:
    """`store_message_and_object_tree`, which rings the bell of whoever waits for the message it stored once the
    message is committed (Flower stores it and its tree in one transaction) and its objects are uploaded."""

    def ringing(self: Any, message: Any, *args: Any, **kwargs: Any) -> tuple[bool, list[str]]:
        stored, missing = store(self, message, *args, **kwargs)
        if stored:
            meta = message.metadata
            bell = run_replies(meta.run_id) if meta.reply_to_message_id else node_inbox(meta.dst_node_id)
            bells.ring_when_uploaded(bell, missing)
        return stored, missing

    ringing.__wrapped__ = store  # type: ignore[attr-defined]
    return ringing


def _telling_uploads(store: Callable[..., bool], *, bells: Bells) -> Callable[..., bool]:
    """`store_object` (a PushObject from a ServerApp or a SuperNode), which tells the bells what arrived."""

    def telling(self: Any, run_id: int, session_id: str, object_id: str, *args: Any, **kwargs: Any) -> bool:
        stored = store(self, run_id, session_id, object_id, *args, **kwargs)
        if stored:
            bells.uploaded(object_id)
        return stored

    telling.__wrapped__ = store  # type: ignore[attr-defined]
    return telling


def _ringing_run(create: Callable[..., int], *, bells: Bells) -> Callable[..., int]:
    """`create_run`, which wakes the executors waiting to claim a ServerApp task (its own, the run's primary)."""

    def ringing(*args: Any, **kwargs: Any) -> int:
        run_id = create(*args, **kwargs)
        bells.ring(NEW_RUNS)
        return run_id

    ringing.__wrapped__ = create  # type: ignore[attr-defined]
    return ringing


def hold_empty_pulls(*, fleet_hold: float, serverapp_hold: float, bells: Bells = BELLS) -> None:
    """Hold a hospital's empty Fleet `PullMessages` up to `fleet_hold` s, and a ServerApp's empty reply pull and an
    executor's empty ServerApp claim up to `serverapp_hold` s (0: answer at once, as Flower does). Call before the
    SuperLink starts, in its process."""
    _require_pinned()
    for module, name in LINK_STATES:
        state = getattr(importlib.import_module(module), name)
        state.store_message_and_object_tree = _ringing(state.store_message_and_object_tree, bells=bells)
        state.create_run = _ringing_run(state.create_run, bells=bells)
        state.store_object = _telling_uploads(state.store_object, bells=bells)
    if fleet_hold > 0:
        fleet = importlib.import_module(FLEET_HANDLERS)
        fleet.pull_messages = _held(
            fleet.pull_messages, key=_asking_node, hold=fleet_hold, bells=bells, empty=_no_messages
        )
    if serverapp_hold > 0:
        runtime = importlib.import_module(RUNTIME_HANDLERS)
        # Rechecked every REPLY_RECHECK s: a reply pull is also when the SuperLink notices that a node missed its
        # heartbeats and answers "Node Unavailable" for the message that node took. Asked only once a second, it
        # lost that race to the same node restarting (its new session makes it online again, and the message
        # its dead session took would never be answered): tests/integration/test_dropouts.py.
        runtime.pull_messages = _held(
            runtime.pull_messages,
            key=_asking_run,
            hold=serverapp_hold,
            bells=bells,
            empty=_no_messages,
            recheck=REPLY_RECHECK,
        )
        runtime.acquire_task = _held(
            runtime.acquire_task, key=lambda *_, **__: NEW_RUNS, hold=serverapp_hold, bells=bells, empty=_no_task
        )


def _asking_node(*args: Any, **kwargs: Any) -> Hashable:
    """The Fleet handler's `pull_messages(request, state, store)`: the inbox of the node that asks."""
    request = kwargs["request"] if "request" in kwargs else args[0]
    return node_inbox(request.node.node_id)


def _asking_run(*args: Any, **kwargs: Any) -> Hashable:
    """The runtime handler's `pull_messages(request, state, task)`: the replies of the ServerApp's run."""
    task = kwargs["task"] if "task" in kwargs else args[2]
    return run_replies(task.run_id)


def run_flower_superlink(argv: list[str]) -> None:
    """Flower's own `flower-superlink` main, with `argv` as its command line."""
    sys.argv = ["flower-superlink", *argv]
    importlib.import_module("flwr.superlink.cli.flower_superlink").flower_superlink()
