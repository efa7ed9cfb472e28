"""The hospital side: a Flower ClientApp that trains on local data only.

Each train message also scores the incoming global model on the hospital's
validation rows before training. Flower starts a fresh ClientApp process per
message and polls every 3 s, so folding evaluation into training saves a whole
message exchange per round.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_round import LocalRound, RoundRefused

app = ClientApp()
log = logging.getLogger("flwr.fedcare.client")


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        local = LocalRound.from_message(msg, context)
        before = local.score()
        outcome, event = local.train()
    except RoundRefused as exc:
        log.error("%s", exc)
        return Message(RecordDict({"status": ConfigRecord(exc.as_status())}), reply_to=msg)
    metrics = MetricRecord(
        {
            "num-examples": local.train_examples,
            "train-loss": outcome.loss,
            "skipped-steps": outcome.skipped_steps,
            "eval-loss": before.loss,
            "eval-accuracy": before.accuracy,
            "eval-examples": before.examples,
        }
    )
    content = RecordDict({"metrics": metrics, "status": ConfigRecord(local.ok_status())})
    try:
        local.put_update(content)
    except RoundRefused as exc:
        log.error("%s", exc)  # the DP spending stays committed: the accountant only ever over-counts
        return Message(RecordDict({"status": ConfigRecord(exc.as_status())}), reply_to=msg)
    if event is not None:
        content["dp-event"] = ConfigRecord(event.as_record())
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        local = LocalRound.from_message(msg, context)
        score = local.score()
    except RoundRefused as exc:
        log.error("%s", exc)
        return Message(RecordDict({"status": ConfigRecord(exc.as_status())}), reply_to=msg)
    metrics = MetricRecord({"eval-loss": score.loss, "eval-accuracy": score.accuracy, "eval-examples": score.examples})
    return Message(RecordDict({"metrics": metrics, "status": ConfigRecord(local.ok_status())}), reply_to=msg)
