"""The hospital side: a Flower ClientApp that trains on local data only.

Each train message also scores the incoming global model on the hospital's
validation rows before training. Flower starts a fresh ClientApp process per
message and polls every 3 s, so folding evaluation into training saves a whole
message exchange per round.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.institution import institution_name

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from client.secagg_client import handle_stage, is_secagg_stage

    if is_secagg_stage(msg):  # four SecAgg+ stages per round; only one trains (client/secagg_client.py)
        return handle_stage(msg, context)
    # Imported per handler, not at the top: torch alone takes seconds, and SecAgg+ key-exchange
    # stages and liveness pings (each a fresh process) never need it.
    from client.local_round import RoundRefused
    from client.train_reply import refusal, train_round

    try:
        trained = train_round(msg, context)
    except RoundRefused as exc:
        return refusal(msg, exc)
    content = RecordDict()
    try:
        trained.local.put_update(content)
    except RoundRefused as exc:
        return trained.refuse(msg, exc)
    return trained.reply(msg, content)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from client.local_round import LocalRound, RoundRefused
    from client.train_reply import refusal

    try:
        local = LocalRound.from_message(msg, context)
        score = local.score()
    except RoundRefused as exc:
        return refusal(msg, exc)
    metrics = MetricRecord({"eval-loss": score.loss, "eval-accuracy": score.accuracy, "eval-examples": score.examples})
    return Message(RecordDict({"metrics": metrics, "status": ConfigRecord(local.ok_status())}), reply_to=msg)


@app.query("liveness")
def liveness(msg: Message, context: Context) -> Message:
    """Answer the server's "are you there?" before it counts this hospital into a SecAgg+ round."""
    institution = institution_name(context.node_config.get("institution"), node_id=context.node_id)
    return Message(RecordDict({"status": ConfigRecord({"ok": True, "institution": institution})}), reply_to=msg)
