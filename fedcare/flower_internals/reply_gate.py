"""One complete reply per message: the replies fedcare's SuperNode lets Flower's `_push_messages` send.

Flower 1.39's SuperNode sends a reply as soon as the ClientApp has stored it, then streams the reply's objects
as they arrive; after each message it pulls, it sends the replies stored by then, and assumes one reply per
message. fedcare's warm executor breaks that assumption when a ClientApp dies while uploading its reply: the
reply stays without its content, and the executor's parent answers the same message with an error reply
(`tasks.answer_failed_task`). Sent as Flower sends it, the partial reply wedged the node; dropped after a
patience (the chaos branch), it left the SuperLink holding a reply that never completes, which turned the
error reply away as a duplicate, and that error reply stayed in the node's store to be sent after the *next*
message in place of that message's reply. Every later reply of the hospital was then one message late, and
the ServerApp waited out its round timeout (issue 16: the chaos soak's kill-clientapp trial, once the latency
work made ClientApps fast enough to be killed mid-upload).

So `_push_messages` is shown a reply only once all its objects are in the node's store, and only the first
complete reply to a message. And a reply that completes after its message's push stage ended (that stage found
an older reply, of a run the coordinator's crash ended, and sent it) is pushed after the node's next empty pull:
Flower pushes only after a pulled message, and the ServerApp, waiting for this reply, sends none.

A reply waiting for its content is held until it completes, until another reply
to its message completes (it is then dropped), or for `patience` seconds (then it is dropped with its
message, unsent, and the node goes back to pulling messages). A reply to a message already answered is dropped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fedcare.node")
ANSWERED_MEMORY = 4096  # messages whose reply went out, remembered to drop a late second reply


@dataclass
class _Held:
    reply: Any  # flwr.app.Message
    since: float


def reply_is_complete(store: Any, reply_id: str) -> bool:
    """Whether every object of the reply is in the node's object store (Flower stores b"" until it arrives)."""
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.object_store import NoObjectInStoreError

    try:
        tree = store.get_object_tree(reply_id)
    except NoObjectInStoreError:
        return False
    return all(store.get(node.object_id) not in (None, b"") for node in iterate_object_tree(tree))


class NoReplyLeft(Exception):
    """The reply the node waited for was dropped and no other is held: its push stage ends, and it pulls again."""


class ReplyGate:
    """Holds the node's replies until they can be sent whole; `state_for` is what `_push_messages` reads."""

    def __init__(self, *, patience: float) -> None:
        self.patience = patience
        self.held: dict[str, _Held] = {}  # reply id -> reply, in the order they were stored
        self.answered: OrderedDict[str, None] = OrderedDict()  # ids of messages whose reply was released

    def state_for(self, state: Any, store: Any) -> GatedState:
        return GatedState(state, store, self)

    def complete_replies(self, state: Any, store: Any) -> list[Any]:
        """The replies to send now; the others stay held or are dropped (the module says which)."""
        now = self._take(state)
        ready, gave_up = [], False
        for reply_id, held in list(self.held.items()):
            message_id = held.reply.metadata.reply_to_message_id
            if message_id in self.answered:
                self._drop(state, store, reply_id, why="its message was answered already")
            elif reply_is_complete(store, reply_id):
                del self.held[reply_id]
                self._answer(message_id)
                ready.append(held.reply)
            elif now - held.since > self.patience:
                self._drop(state, store, reply_id, why=f"its content did not arrive within {self.patience:g} s")
                state.delete_messages(message_ids=[message_id])  # what Flower does once a message is answered
                self._answer(message_id)
                gave_up = True
        if gave_up and not ready and not self.held:
            raise NoReplyLeft
        return ready

    def has_complete(self, state: Any, store: Any) -> bool:
        """Whether `complete_replies` would release a reply now, without releasing it."""
        self._take(state)
        return any(
            held.reply.metadata.reply_to_message_id not in self.answered and reply_is_complete(store, reply_id)
            for reply_id, held in self.held.items()
        )

    def _take(self, state: Any) -> float:
        """Hold the node's new replies (reading marks them retrieved: the gate holds them from now on); the time."""
        now = time.monotonic()
        for reply in state.get_messages(is_reply=True):
            self.held.setdefault(reply.metadata.message_id, _Held(reply, now))
        return now

    def _answer(self, message_id: str) -> None:
        self.answered[message_id] = None
        while len(self.answered) > ANSWERED_MEMORY:
            self.answered.popitem(last=False)

    def _drop(self, state: Any, store: Any, reply_id: str, *, why: str) -> None:
        held = self.held.pop(reply_id)
        state.delete_messages(message_ids=[reply_id])
        store.delete(reply_id)
        meta = held.reply.metadata
        log.warning("run %s: a reply to message %s is dropped: %s", meta.run_id, meta.reply_to_message_id, why)


class GatedState:
    """The node's state as Flower's `_push_messages` sees it: its replies come through the gate."""

    def __init__(self, state: Any, store: Any, gate: ReplyGate) -> None:
        self._state, self._store, self._gate = state, store, gate

    def get_messages(self, **filters: Any) -> Any:
        if filters == {"is_reply": True}:  # `_push_messages` waiting for replies to send
            return self._gate.complete_replies(self._state, self._store)
        return self._state.get_messages(**filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)
