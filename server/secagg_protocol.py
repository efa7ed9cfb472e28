"""One SecAgg+ round with Flower's `SecAggPlusWorkflow`: fedcare's only use of Flower's legacy server API.

The workflow runs only inside a `LegacyContext` with a legacy `Strategy`. Here each round gets
its own context, and a one-round strategy that samples exactly the nodes the ServerApp's loop
chose, so the loop's node selection, budget gate and results.json work as in the other modes.

Two changes to Flower's workflow (1.39; the same code in 1.41):

- A hospital that leaves before its key shares went out (setup or share-keys stage) holds no
  part of anyone's masks and adds nothing to the sum, yet Flower keeps it among the sampled
  nodes and then fails the round with "Not enough shares to recover secret". It is dropped
  from the round instead, so a node the SuperLink still lists (about 44 s after a crash)
  costs one stage timeout, not the round.
- A failure says which stage failed and why, instead of a log line and a silent return.

Replies are pulled every `poll_interval` seconds (Flower's `send_and_receive` sleeps 3 s) and
the masked-vectors stage's replies, which carry fedcare's metrics, status and DP event next to
the masked vector, are handed to `check_replies` before any mask is removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common.settings import SECAGG_MODULUS, RunSettings
from common.wire_bytes import content_bytes

log = logging.getLogger("flwr.fedcare.server")

STAGES = ("setup", "share-keys", "masked-vectors", "unmask")

# Takes the masked-vectors stage's replies; returns why the round must stop, or None to unmask.
CheckReplies = Callable[[list[Message]], "str | None"]


class SecAggFailed(RuntimeError):
    """The round cannot produce a sum; `stage` is where it stopped."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"SecAgg+ stage '{stage}': {reason}")
        self.stage, self.reason = stage, reason


@dataclass
class SecAggRound:
    """What one round of the protocol produced."""

    answered: dict[str, set[int]] = field(default_factory=dict)  # stage -> nodes whose reply arrived
    masked_replies: list[Message] = field(default_factory=list)  # the masked-vectors stage's replies
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    average: list[np.ndarray] | None = None  # the weighted average, in the model's tensor order
    institutions: dict[int, str] = field(default_factory=dict)  # node id -> institution, as the nodes said
    failure: SecAggFailed | None = None
    # node id -> content bytes of every stage's messages (common/wire_bytes.py): to it, and its replies
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)

    def bytes_by(self, name: Callable[[int], str]) -> tuple[dict[str, int], int | None]:
        """Bytes up per institution, and down per hospital: the mean, as the messages to each differ only
        in their key shares (None when nothing was sent)."""
        down = round(sum(self.bytes_down.values()) / len(self.bytes_down)) if self.bytes_down else None
        return {name(node): n for node, n in sorted(self.bytes_up.items())}, down


class _StageGrid:
    """The Grid as the workflow sees it: a faster `send_and_receive` that keeps the last replies."""

    def __init__(self, grid: Grid, *, poll_interval: float) -> None:
        self._grid, self._poll = grid, poll_interval
        self.last: list[Message] = []
        self.institutions: dict[int, str] = {}  # node id -> institution, from the replies' status records
        self.bytes_down: dict[int, int] = {}  # node id -> bytes sent to it, all stages
        self.bytes_up: dict[int, int] = {}  # node id -> bytes of its replies, all stages

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.bytes_down[node] = self.bytes_down.get(node, 0) + content_bytes(msg.content)
        pending = set(self._grid.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending and time.monotonic() < deadline:
            pulled = list(self._grid.pull_messages(pending))
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            replies += pulled
            for reply in pulled:
                if not reply.has_error():
                    node = reply.metadata.src_node_id
                    self.bytes_up[node] = self.bytes_up.get(node, 0) + content_bytes(reply.content)
                if not reply.has_error() and "status" in reply.content:
                    self.institutions[reply.metadata.src_node_id] = str(reply.content["status"].get("institution"))
            if pending:
                time.sleep(self._poll)
        self.last = replies
        return replies


class _OneRoundStrategy:
    """The legacy Strategy surface the workflow calls: sample exactly `nodes`, keep the average."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes
        self.average: list[np.ndarray] | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        # The global model and fedcare's config are added to the masked-vectors stage's messages by
        # _PrunedSecAggPlus, under the same record names as plain mode; the FitIns stays empty.
        empty = FitIns(Parameters(tensors=[], tensor_type=""), {})
        return [(GridClientProxy(node, self._grid, self._grid.run.run_id), empty) for node in self._nodes]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        if results:  # the workflow put the unmasked average into every FitRes
            self.average = parameters_to_ndarrays(results[0][1].parameters)
            return results[0][1].parameters, {}
        return None, {}


class _PrunedSecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow, minus nodes that left before sharing keys, with failures that say why."""

    def __init__(
        self,
        *,
        settings: RunSettings,
        model_content: RecordDict,
        check_replies: CheckReplies,
        outcome: SecAggRound,
        content_for: Callable[[int], RecordDict] | None = None,
    ) -> None:
        super().__init__(
            settings.num_shares,
            settings.reconstruction_threshold,
            max_weight=settings.max_weight,
            clipping_range=settings.clipping_range,
            quantization_range=settings.quantization_range,
            modulus_range=SECAGG_MODULUS,
            timeout=settings.secagg_timeout,
        )
        self._model_content, self._check_replies, self._outcome = model_content, check_replies, outcome
        self._content_for = content_for

    def _check_threshold(self, state: WorkflowState) -> bool:
        return True  # checked in _after, once the nodes that hold no shares are gone

    def _after(self, stage: str, state: WorkflowState, *, forget_silent: bool) -> bool:
        answered = set(state.active_node_ids)
        self._outcome.answered[stage] = answered
        if forget_silent:
            state.sampled_node_ids = state.sampled_node_ids & answered
            state.nid_to_neighbours = {
                nid: nbrs & answered for nid, nbrs in state.nid_to_neighbours.items() if nid in answered
            }
        short = sorted(
            nid
            for nid in state.sampled_node_ids
            if len(state.nid_to_neighbours[nid] & state.active_node_ids) < state.threshold
        )
        if short:
            self._outcome.failure = SecAggFailed(
                stage,
                (
                    f"{len(answered)} of {len(state.sampled_node_ids)} hospitals answered; "
                    f"node(s) {short} have fewer than "
                    f"reconstruction-threshold={state.threshold} live neighbours, so their masks could not be removed"
                ),
            )
            return False
        return True

    def _timed(self, stage: str, run: Callable[[], bool]) -> bool:
        started = time.monotonic()
        try:
            return run()
        finally:
            self._outcome.seconds[stage] = round(time.monotonic() - started, 2)

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        if not self._timed("setup", lambda: super(_PrunedSecAggPlus, self).setup_stage(grid, context, state)):
            self._outcome.failure = SecAggFailed("setup", "fewer than 2 hospitals to aggregate")
            return False
        return self._after("setup", state, forget_silent=True)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self._timed("share-keys", lambda: super(_PrunedSecAggPlus, self).share_keys_stage(grid, context, state))
        return self._after("share-keys", state, forget_silent=True)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        for nid in state.active_node_ids:
            content = self._content_for(nid) if self._content_for else self._model_content
            for name, record in content.items():
                state.nid_to_fitins[nid][name] = record
        self._timed(
            "masked-vectors", lambda: super(_PrunedSecAggPlus, self).collect_masked_vectors_stage(grid, context, state)
        )
        self._outcome.masked_replies = list(cast(_StageGrid, grid).last)
        if not self._after("masked-vectors", state, forget_silent=False):
            return False
        reason = self._check_replies(self._outcome.masked_replies)
        if reason is not None:
            self._outcome.failure = SecAggFailed("masked-vectors", reason)
            return False
        return True

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        expected = len(state.active_node_ids)
        ok = self._timed("unmask", lambda: super(_PrunedSecAggPlus, self).unmask_stage(grid, context, state))
        self._outcome.answered["unmask"] = set(state.active_node_ids)
        if not ok:
            self._outcome.failure = SecAggFailed(
                "unmask",
                (
                    f"only {len(state.active_node_ids)} of {expected} hospitals returned their key shares; "
                    "a secret needs "
                    f"reconstruction-threshold={state.threshold} shares, so the masks could not be removed"
                ),
            )
        return ok


def run_secagg_round(
    *,
    grid: Grid,
    settings: RunSettings,
    nodes: list[int],
    server_round: int,
    model_content: RecordDict,
    check_replies: CheckReplies,
    content_for: Callable[[int], RecordDict] | None = None,
) -> SecAggRound:
    """Run the four SecAgg+ stages on exactly `nodes`; never raises for a protocol failure, reports it.
    `content_for(node)`: that node's own training content (its schedule, round-deadline), else `model_content`."""
    outcome = SecAggRound()
    strategy = _OneRoundStrategy(grid, nodes)
    state = RecordDict(
        {MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round}), MAIN_PARAMS_RECORD: ArrayRecord()}
    )
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=state, run_config={}),
        config=ServerConfig(num_rounds=1),
        strategy=cast(Strategy, strategy),
    )
    workflow = _PrunedSecAggPlus(
        settings=settings,
        model_content=model_content,
        check_replies=check_replies,
        outcome=outcome,
        content_for=content_for,
    )
    stage_grid = _StageGrid(grid, poll_interval=settings.poll_interval)
    try:
        workflow(cast(Grid, stage_grid), context)
    except Exception as exc:  # a malformed reply inside Flower's stage code: fail this round, loudly
        stage = STAGES[min(len(outcome.seconds), len(STAGES)) - 1] if outcome.seconds else "setup"
        outcome.failure = SecAggFailed(stage, f"{type(exc).__name__}: {exc}")
    outcome.institutions = stage_grid.institutions
    outcome.bytes_down, outcome.bytes_up = stage_grid.bytes_down, stage_grid.bytes_up
    if outcome.failure is None:
        if strategy.average is None:
            outcome.failure = SecAggFailed("unmask", "the workflow ended without an aggregate")
        else:
            outcome.average = strategy.average
    return outcome
