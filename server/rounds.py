"""One federated round, per privacy mode: what goes out, how replies are combined, what is kept.

The ServerApp's loop (node selection, budget gate, results.json) is the same for every mode; each
mode only decides how the global model travels and how updates are summed. Plain FedAvg lives here;
HE in `server.he_rounds`, SecAgg+ in its own module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.codecs import from_numpy, save_weights
from common.schema import DatasetSchema
from common.settings import RunSettings
from server.fedavg import fedavg
from server.messaging import exchange, message_config
from server.replies import SortedReplies, sort_replies


@dataclass
class RoundOutcome:
    replies: SortedReplies
    model_path: Path | None = None  # None: the round failed and the global model is unchanged
    reason: str | None = None  # why it failed
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific facts for results.json

    @property
    def aggregated(self) -> bool:
        return self.model_path is not None


@dataclass(frozen=True)
class RoundContext:
    grid: Grid
    settings: RunSettings
    schema: DatasetSchema
    run_dir: Path

    @property
    def run_id(self) -> int:
        return self.grid.run.run_id

    def send(self, content: RecordDict, *, nodes: list[int], message_type: str, server_round: int) -> Iterator[Message]:
        return exchange(
            self.grid,
            nodes=nodes,
            content=content,
            message_type=message_type,
            server_round=server_round,
            timeout=self.settings.round_timeout,
            poll_interval=self.settings.poll_interval,
        )

    def config(self, server_round: int) -> RecordDict:
        return RecordDict({"config": message_config(self.settings, self.schema, server_round)})


class Rounds(Protocol):
    """What the ServerApp's loop needs from a privacy mode."""

    mode: str

    def privacy_facts(self) -> dict[str, Any]: ...

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome: ...

    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies: ...

    def save_final(self) -> Path: ...


@dataclass
class PlainRounds:
    """Weighted FedAvg over readable updates: the server sees each hospital's (DP-noised) weights."""

    ctx: RoundContext
    weights: OrderedDict[str, np.ndarray]
    mode: str = "plain"

    def privacy_facts(self) -> dict[str, Any]:
        return {"mode": self.mode}

    def _content(self, server_round: int) -> RecordDict:
        content = self.ctx.config(server_round)
        content["arrays"] = from_numpy(self.weights)
        return content

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome:
        replies = sort_replies(
            self.ctx.send(
                self._content(server_round), nodes=nodes, message_type=MessageType.TRAIN, server_round=server_round
            ),
            reference=self.weights,
            expect_update=True,
        )
        if not replies.updates:
            return RoundOutcome(replies, reason="no valid update from any hospital")
        self.weights = fedavg(replies.updates)
        path = self.ctx.run_dir / "models" / f"round-{server_round}.pt"
        save_weights(self.weights, path)
        return RoundOutcome(replies, model_path=path)

    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies:
        return sort_replies(
            self.ctx.send(
                self._content(server_round), nodes=nodes, message_type=MessageType.EVALUATE, server_round=server_round
            ),
            reference=None,
            expect_update=False,
        )

    def save_final(self) -> Path:
        path = self.ctx.run_dir / "final_model.pt"
        save_weights(self.weights, path)
        return path
