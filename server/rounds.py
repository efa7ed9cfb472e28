"""One federated round, per privacy mode: what goes out, how replies are combined, what is kept.

The ServerApp's loop (node selection, budget gate, results.json) is the same for every mode and
sees a mode only through the `Rounds` protocol. What the modes share (the model in each message,
the saved model files, the final scoring) is `BaseRounds`; each mode's class holds only how its
model travels and how updates are summed. Plain FedAvg lives here; HE in `server.he_rounds`,
SecAgg+ in `server.secagg_rounds`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.codecs import InvalidUpdate, check_update, save_weights, weights_from_bytes, weights_to_bytes
from common.int8_wire import put_weights
from common.schema import DatasetSchema
from common.server_optimizer import ServerOptimizer
from common.settings import RunSettings
from common.site_work import Schedule, put_schedule
from common.wire_bytes import content_bytes
from server.fedavg import fedavg
from server.fednova import fednova
from server.messaging import Dropout, exchange, message_config
from server.replies import Accept, SortedReplies, sort_replies


def scheduled_content(content: RecordDict, deadline: float, steps: dict[int, int], node: int) -> RecordDict:
    """`content` for one node with its schedule: the deadline, and its local steps once it was measured (the
    records are shared, not copied)."""
    mine = RecordDict(dict(content.items()))
    put_schedule(mine, Schedule(deadline=deadline, local_steps=steps.get(node)))
    return mine


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
    dropouts: list[Dropout] = field(default_factory=list)  # nodes that left during `send`s, until taken
    # This round's local steps per node (round-deadline, server/local_work.py); train messages carry them
    # with the deadline when round-deadline is set.
    schedule: dict[int, int] = field(default_factory=dict)

    @property
    def run_id(self) -> int:
        """The fedcare run id (docs/resume.md): the Flower run id of the run's first submission, which a
        resumed run keeps; it names the run directory and goes into every DP event and HE header."""
        return self.settings.run_id_for(self.grid.run.run_id)

    def send(self, content: RecordDict, *, nodes: list[int], message_type: str, server_round: int) -> Iterator[Message]:
        content_for = None
        if message_type == MessageType.TRAIN and self.settings.round_deadline > 0:
            content_for = partial(scheduled_content, content, self.settings.round_deadline, self.schedule)
        return exchange(
            self.grid,
            nodes=nodes,
            content=content,
            message_type=message_type,
            server_round=server_round,
            timeout=self.settings.round_timeout,
            poll_interval=self.settings.poll_interval,
            dropouts=self.dropouts,
            content_for=content_for,
        )

    def schedule_work(self, steps: dict[int, int]) -> None:
        """The local steps each node is to take in this round's train messages (none: every node trains in full)."""
        self.schedule.clear()
        self.schedule.update(steps)

    def take_dropouts(self) -> list[Dropout]:
        """The nodes that left during the exchanges since the last call (the ServerApp's loop asks per round)."""
        taken = list(self.dropouts)
        self.dropouts.clear()
        return taken

    def config(self, server_round: int) -> RecordDict:
        return RecordDict({"config": message_config(self.settings, self.schema, server_round, run_id=self.run_id)})


class Rounds(Protocol):
    """What the ServerApp's loop needs from a privacy mode."""

    mode: ClassVar[str]

    def privacy_facts(self) -> dict[str, Any]: ...

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome: ...

    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies: ...

    def save_final(self) -> Path: ...

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to go on (the global model, optimizer or strategy state): JSON values,
        and bytes for anything binary. Written to the checkpoint after every round (server.checkpoint)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `state()` returned; raise CheckpointError when it does not fit this run."""
        ...


@dataclass
class BaseRounds(ABC):
    """What every mode does alike: the global model travels in each message, is saved after each
    aggregated round (`models/round-N`) and at the end (`final_model`), and the hospitals score it
    at the end. A mode says how its model is carried and stored, and how a round aggregates."""

    ctx: RoundContext
    mode: ClassVar[str]
    model_suffix: ClassVar[str]  # of the saved model files: ".pt" (plaintext) or ".he" (ciphertext)

    @abstractmethod
    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome: ...

    @abstractmethod
    def model_content(self, server_round: int) -> RecordDict:
        """The round's message: its config and the global model as the hospitals receive it."""

    @abstractmethod
    def write_model(self, path: Path) -> None:
        """Write the global model as this mode keeps it (plaintext weights or the encrypted sum)."""

    def privacy_facts(self) -> dict[str, Any]:
        return {"mode": self.mode}

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 (a mode without state of its own keeps this)
        return None

    def save_round_model(self, server_round: int) -> Path:
        path = self.ctx.run_dir / "models" / f"round-{server_round}{self.model_suffix}"
        self.write_model(path)
        return path

    def save_final(self) -> Path:
        path = self.ctx.run_dir / f"final_model{self.model_suffix}"
        self.write_model(path)
        return path

    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies:
        return self.send_evaluate(nodes=nodes, server_round=server_round)

    def send_evaluate(
        self, *, nodes: list[int], server_round: int, accept: Accept | None = None, per_site: bool = True
    ) -> SortedReplies:
        """Send the current model to be scored and sort the replies; a mode that receives its scores
        in another form (HE: encrypted) passes its own `accept` and reads no per-site figure."""
        return sort_replies(
            self.ctx.send(
                self.model_content(server_round),
                nodes=nodes,
                message_type=MessageType.EVALUATE,
                server_round=server_round,
            ),
            reference=None,
            expect_update=False,
            accept=accept,
            per_site=per_site,
            resent_of=(str(self.ctx.run_id), server_round),
        )


@dataclass
class PlaintextModelRounds(BaseRounds):
    """Modes in which the server holds the averaged model in plaintext (plain, SecAgg+): it goes out
    as arrays and is saved as `.pt` weights, and the server applies the run's server optimizer to the
    round's average itself (its state is `optimizer.state()`, for checkpoints)."""

    weights: OrderedDict[str, np.ndarray]
    optimizer: ServerOptimizer | None = None  # None: the run's, from its settings
    model_suffix: ClassVar[str] = ".pt"

    def __post_init__(self) -> None:
        if self.optimizer is None:
            self.optimizer = ServerOptimizer.from_settings(self.ctx.settings)

    def apply_average(self, average: OrderedDict[str, np.ndarray]) -> None:
        """Move the global model with this round's average, through the server optimizer."""
        assert self.optimizer is not None
        self.weights = self.optimizer.step(current=self.weights, average=average)

    def model_content(self, server_round: int) -> RecordDict:
        """The model as `update-compression` says during the rounds (int8: quantized afresh for each round);
        the final scoring (round num-rounds + 1) always gets float32, so the accuracy results.json reports
        for the final model is that of `final_model.pt` itself."""
        content = self.ctx.config(server_round)
        training = server_round <= self.ctx.settings.num_rounds
        compression = self.ctx.settings.update_compression if training else "none"
        put_weights(content, self.weights, compression=compression)
        return content

    def write_model(self, path: Path) -> None:
        save_weights(self.weights, path)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "weights": weights_to_bytes(self.weights)}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        from server.checkpoint import CheckpointError

        try:
            weights = weights_from_bytes(state["weights"])
            check_update(weights, reference=self.weights)
        except (KeyError, TypeError, InvalidUpdate) as exc:
            raise CheckpointError(f"the checkpoint's global model does not fit this run's model: {exc}") from exc
        self.weights = weights


@dataclass
class PlainRounds(PlaintextModelRounds):
    """Weighted FedAvg over readable updates: the server sees each hospital's (DP-noised) weights."""

    mode: ClassVar[str] = "plain"

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome:
        content = self.model_content(server_round)
        replies = sort_replies(
            self.ctx.send(content, nodes=nodes, message_type=MessageType.TRAIN, server_round=server_round),
            reference=self.weights,
            expect_update=True,
        )
        replies.bytes_down = content_bytes(content)
        if not replies.updates:
            return RoundOutcome(replies, reason="no valid update from any hospital")
        if self.ctx.settings.fednova:  # unequal local steps, each update normalised by its own (deadline-aggregation)
            replies.drop_updates_without_steps()
            if not replies.updates:
                return RoundOutcome(replies, reason="no update reported its local steps (round-deadline needs them)")
            self.apply_average(fednova(replies.updates, reference=self.weights))
        else:
            self.apply_average(fedavg(replies.updates))
        return RoundOutcome(replies, model_path=self.save_round_model(server_round))
