"""A grid that hands each message straight to the real ClientApp handlers, in one process.

Round logic is tested against the production client code this way; the SuperLink and the
processes are left to `tests/integration/`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace

from flwr.app import Context, Message, RecordDict

from client.app import evaluate as client_evaluate
from client.app import federation_metrics as client_federation_metrics
from client.app import liveness as client_liveness
from client.app import train as client_train

RUN = 77
HANDLERS = {
    "train": client_train,
    "evaluate": client_evaluate,
    "query.metrics": client_federation_metrics,
    "query.liveness": client_liveness,
}


@dataclass
class LoopbackGrid:
    """Delivers each pushed message to the hospital's real handler; `tamper` may rewrite a reply."""

    hospitals: dict[int, dict[str, str]]
    tamper: Callable[[int, Message], None] = lambda node, reply: None
    run: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(run_id=RUN))
    _replies: dict[str, Message] = field(default_factory=dict)
    received: list[tuple[int, str]] = field(default_factory=list)  # (node, message type) as delivered
    # One Context per hospital, as a SuperNode keeps it: SecAgg+'s mod carries its state across stages in it.
    contexts: dict[int, Context] = field(default_factory=dict)

    def get_node_ids(self) -> list[int]:
        return list(self.hospitals)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.received)}"  # unique within the run
            node = msg.metadata.dst_node_id
            context = self.contexts.setdefault(
                node,
                Context(run_id=RUN, node_id=node, node_config=self.hospitals[node], state=RecordDict(), run_config={}),
            )
            self.received.append((node, msg.metadata.message_type))
            # A copy, as over the wire: handlers may change what they receive (SecAgg+'s mod pops its stage
            # key, and Flower's workflow sends one content object to every node).
            reply = HANDLERS[msg.metadata.message_type](copy.deepcopy(msg), context)
            self.tamper(node, reply)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]
