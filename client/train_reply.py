"""How a hospital answers a train message: one flow for the plain/HE handler and SecAgg+'s masked stage.

Score the incoming global model, train (with DP, the round's spending is committed to disk
first), and put what travels in clear next to the update: metrics, status, the DP event.
The refusal rule lives here once: a round refused *after* training still carries its DP
event, so the server's ledger records spending the local accountant already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.local_round import LocalRound, RoundRefused
from common.dp_event import DPEvent

log = logging.getLogger("flwr.fedcare.client")


def refusal(
    msg: Message, exc: RoundRefused, *, content: RecordDict | None = None, event: DPEvent | None = None
) -> Message:
    """The reply of a hospital that does not send an update; `event`: the budget it spent anyway."""
    log.error("%s", exc)
    content = RecordDict() if content is None else content
    content["status"] = ConfigRecord(exc.as_status())
    if event is not None:
        content["dp-event"] = ConfigRecord(event.as_record())
    return Message(content, reply_to=msg)


@dataclass
class TrainedRound:
    """A round trained at this hospital, its update not yet in a reply."""

    local: LocalRound
    metrics: MetricRecord
    event: DPEvent | None  # None without DP

    def reply(self, msg: Message, content: RecordDict) -> Message:
        """`content` (holding the update) with the round's metrics, status and DP event."""
        content["metrics"] = self.metrics
        content["status"] = ConfigRecord(self.local.ok_status())
        if self.event is not None:
            content["dp-event"] = ConfigRecord(self.event.as_record())
        return Message(content, reply_to=msg)

    def refuse(self, msg: Message, exc: RoundRefused, *, content: RecordDict | None = None) -> Message:
        """Trained, but the update cannot leave: the refusal carries the DP event."""
        return refusal(msg, exc, content=content, event=self.event)


def train_round(
    msg: Message, context: Context, *, before_training: Callable[[LocalRound], None] | None = None
) -> TrainedRound:
    """Rebuild the round from `msg`, score the incoming model, and train.

    `before_training` may refuse the round (raise RoundRefused) once the data is known and
    before any budget is spent. Raises RoundRefused; nothing is spent when it comes before training.
    """
    local = LocalRound.from_message(msg, context)
    before = local.score()
    if before_training is not None:
        before_training(local)
    outcome, event = local.train()
    return TrainedRound(local=local, metrics=local.train_metrics(outcome, before), event=event)
