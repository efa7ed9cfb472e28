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
        trained.put_update(content)
    except RoundRefused as exc:
        return trained.refuse(msg, exc)
    return trained.reply(msg, content)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from client.local_round import LocalRound, RoundRefused
    from client.metrics_report import put_encrypted_metrics, put_figures, received_figures, site_metrics
    from client.train_reply import put_earlier_events, refusal

    try:
        local = LocalRound.from_message(msg, context)
        score = local.score()
        content = RecordDict()
        if local.config.per_site_metrics:
            metrics = {"eval-loss": score.loss, "eval-accuracy": score.accuracy, "eval-examples": score.examples}
        else:  # the scores travel only inside the aggregate (client/metrics_report.py)
            metrics = {"num-examples": local.train_examples}
            put_figures(content, received_figures(msg, local))
            if local.secret_context is not None:
                put_encrypted_metrics(content, local, site_metrics(local, score))
    except RoundRefused as exc:
        return refusal(msg, exc)
    content["metrics"] = MetricRecord(metrics)
    content["status"] = ConfigRecord(local.ok_status())
    # No train reply follows the final scoring: a ClientApp killed in the last round after committing its
    # spending reports that round here, or never.
    put_earlier_events(content, local, before_round=local.config.server_round)
    return Message(content, reply_to=msg)


@app.query("metrics")
def federation_metrics(msg: Message, context: Context) -> Message:
    """HE aggregate mode, after the final scoring: decrypt the server's sum of the hospitals' scores and
    report the federation-level figures (the server holds no key to do it)."""
    # The secret context is found as for a train message (one rule for where the key lives).
    from client.metrics_report import decrypt_figures, put_figures
    from client.refusals import RoundRefused
    from client.secret_context import secret_context_for
    from client.train_reply import refusal
    from common.settings import NodeSettings, SettingsError

    institution = institution_name(context.node_config.get("institution"), node_id=context.node_id)
    try:
        try:
            node = NodeSettings.from_node_config(context.node_config)
        except SettingsError as exc:
            raise RoundRefused(code="bad-local-data", reason=str(exc), institution=institution) from exc
        run_key_id = str(msg.content["config"].get("he-key-id", "")) if "config" in msg.content else ""
        secret = secret_context_for(node, institution, run_key_id=run_key_id or None)
    except RoundRefused as exc:
        return refusal(msg, exc)
    latest = int(msg.content["config"]["server-round"]) if "config" in msg.content else 0
    run_id = msg.metadata.run_id  # or the resumed run's first id (docs/resume.md)
    if "config" in msg.content and str(msg.content["config"].get("fedcare-run-id", "")).isdigit():
        run_id = int(msg.content["config"]["fedcare-run-id"])
    content = RecordDict({"status": ConfigRecord({"ok": True, "institution": institution})})
    figures = decrypt_figures(msg.content, context=secret, run_id=run_id, latest_round=latest, institution=institution)
    put_figures(content, figures)
    return Message(content, reply_to=msg)


@app.query("liveness")
def liveness(msg: Message, context: Context) -> Message:
    """Answer the server's "are you there?" before it counts this hospital into a SecAgg+ round."""
    institution = institution_name(context.node_config.get("institution"), node_id=context.node_id)
    return Message(RecordDict({"status": ConfigRecord({"ok": True, "institution": institution})}), reply_to=msg)
