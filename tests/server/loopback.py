"""A grid that hands each message straight to the real ClientApp handlers, in one process.

Round logic is tested against the production client code this way; the SuperLink and the
processes are left to `tests/integration/`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

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


def hospital_node_configs(
    data_paths: Sequence[Path],
    *,
    state_root: Path,
    every: Mapping[str, Any] | None = None,
    only: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Node id -> node config for hospitals 1..N, the data file of each in turn: `hospital-<id>`, its data and a
    state directory of its own under `state_root`; `every` adds keys to every node, `only` to the nodes named."""
    return {
        node: {
            "institution": f"hospital-{node}",
            "data-path": str(path),
            "state-dir": str(state_root / f"state-{node}"),
            **(every or {}),
            **(only or {}).get(node, {}),
        }
        for node, path in enumerate(data_paths, start=1)
    }


@dataclass
class LoopbackGrid:
    """Delivers each pushed message to the hospital's real handler; `tamper` may rewrite a reply."""

    hospitals: dict[int, dict[str, Any]]  # node id -> node config (`hospital_node_configs`)
    tamper: Callable[[int, Message], None] = lambda node, reply: None
    run: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(run_id=RUN))
    _replies: dict[str, Message] = field(default_factory=dict)
    received: list[tuple[int, str]] = field(default_factory=list)  # (node, message type) as delivered
    # One Context per hospital, as a SuperNode keeps it: SecAgg+'s mod carries its state across stages in it.
    contexts: dict[int, Context] = field(default_factory=dict)
    # Dead nodes: `unavailable` ones are still listed and the SuperLink answers for them ("Node Unavailable",
    # as once they missed their heartbeats); `offline` ones are no longer listed.
    unavailable: set[int] = field(default_factory=set)
    offline: set[int] = field(default_factory=set)
    _issued: int = 0

    def get_node_ids(self) -> list[int]:
        return [node for node in self.hospitals if node not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            self._issued += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._issued}"  # unique within the run
            node = msg.metadata.dst_node_id
            context = self.contexts.setdefault(
                node,
                Context(run_id=RUN, node_id=node, node_config=self.hospitals[node], state=RecordDict(), run_config={}),
            )
            if node in self.unavailable:
                self._replies[msg.metadata.message_id] = create_message_error_unavailable_res_message(
                    msg.metadata, "node_unavail"
                )
                ids.append(msg.metadata.message_id)
                continue
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
