"""The coordinating side: a Flower ServerApp running weighted FedAvg round by round.

Built on Flower's Message API directly (not a stock Strategy) because every
reply must be validated, rejected with a reason, and written to results.json,
and because hospitals score the incoming model inside the train message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.codecs import from_numpy, save_weights, to_numpy
from common.models import build_model, parameter_count
from common.schema import DatasetSchema, load_schema
from common.settings import RunSettings
from server.budget_gate import BudgetGate
from server.fedavg import fedavg
from server.replies import SortedReplies, sort_replies
from server.results import RunResults

app = ServerApp()
log = logging.getLogger("flwr.fedcare.server")


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of the required {minimum} hospitals connected within {timeout:.0f} s")
        log.info("waiting for hospitals: %d of %d connected", len(nodes), minimum)
        time.sleep(2.0)


def _message_config(settings: RunSettings, schema: DatasetSchema, server_round: int) -> ConfigRecord:
    return ConfigRecord(
        {
            "server-round": server_round,
            "schema": schema.model_dump_json(),
            "local-epochs": settings.local_epochs,
            "batch-size": settings.batch_size,
            "learning-rate": settings.learning_rate,
            "validation-fraction": settings.validation_fraction,
            "seed": settings.seed,
            "num-rounds": settings.num_rounds,
            "dp": settings.dp,
            "noise-multiplier": settings.noise_multiplier,
            "target-epsilon": settings.target_epsilon,
            "max-grad-norm": settings.max_grad_norm,
            "delta": settings.delta,
            "accountant": settings.accountant,
            "grad-sample-mode": settings.grad_sample_mode,
            "amp": settings.amp,
        }
    )


def _exchange(
    grid: Grid, *, nodes: list[int], content: RecordDict, message_type: str, server_round: int, timeout: float,
    poll_interval: float,
) -> list[Message]:
    """Push one message per node and pull replies until all arrive or `timeout` passes.

    Flower's `send_and_receive` sleeps 3 s between pulls; polling the SuperLink on
    loopback every `poll_interval` seconds instead saves about 1.5 s per exchange.
    """
    messages = [
        Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(server_round))
        for node in nodes
    ]
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if pending:
            time.sleep(poll_interval)
    if pending:
        log.warning("round %d: %d hospital(s) did not answer within %.0f s", server_round, len(pending), timeout)
    return replies


def _log_rejections(server_round: int, replies: SortedReplies) -> None:
    for r in replies.rejections:
        log.warning("round %d: rejected %s (node %d): %s: %s", server_round, r.institution, r.node_id, r.code, r.reason)


def _dp_summary(settings: RunSettings) -> dict[str, object]:
    if not settings.dp:
        return {"enabled": False}
    return {
        "enabled": True,
        "noise_multiplier": None if settings.target_epsilon > 0 else settings.noise_multiplier,
        "target_epsilon": settings.target_epsilon or None,
        "max_grad_norm": settings.max_grad_norm,
        "delta": settings.delta,
        "accountant": settings.accountant,
        "grad_sample_mode": settings.grad_sample_mode,
        "amp": settings.amp,
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    schema = load_schema(Path(settings.schema_path))
    run_dir = Path(settings.results_dir).resolve() / str(grid.run.run_id)
    (run_dir / "models").mkdir(parents=True, exist_ok=True)

    model = build_model(schema, seed=settings.seed)
    global_weights = to_numpy(ArrayRecord(model.state_dict()))
    results = RunResults(
        path=run_dir / "results.json",
        run_id=grid.run.run_id,
        privacy_mode="plain",
        model=schema.model,
        parameter_count=parameter_count(model),
        num_rounds=settings.num_rounds,
        dp=_dp_summary(settings),
    )
    results.save()
    if not settings.dp:
        log.warning("DIFFERENTIAL PRIVACY IS OFF for run %d (asked for with dp=false): hospitals' updates carry no DP guarantee", grid.run.run_id)
    log.info("run %d: results in %s", grid.run.run_id, results.path)

    gate = None
    if settings.budget_url:
        gate = BudgetGate.connect(
            url=settings.budget_url,
            token_file=Path(settings.budget_token_file),
            outbox_dir=Path(settings.results_dir).resolve() / "budget-outbox",
            run_id=grid.run.run_id,
        )
        log.info("reporting DP events to the budget service at %s", settings.budget_url)

    def fail_round(server_round: int, reason: str, replies: SortedReplies, skipped: dict[str, str]) -> None:
        log.error("round %d failed: %s; the global model is unchanged", server_round, reason)
        results.record_failed_round(server_round=server_round, reason=reason, replies=replies, skipped=skipped)
        results.save()

    scored_round, model_path = 0, None
    try:
        for server_round in range(1, settings.num_rounds + 1):
            nodes = wait_for_nodes(grid, minimum=settings.min_nodes, timeout=settings.node_wait_timeout)
            skipped: dict[str, str] = {}
            if gate is not None:
                nodes, skipped = gate.select(nodes, server_round=server_round)
            if not nodes:
                fail_round(server_round, "every hospital is out of privacy budget", SortedReplies(), skipped)
                continue
            content = RecordDict(
                {"arrays": from_numpy(global_weights), "config": _message_config(settings, schema, server_round)}
            )
            replies = sort_replies(
                _exchange(grid, nodes=nodes, content=content, message_type=MessageType.TRAIN,
                          server_round=server_round, timeout=settings.round_timeout, poll_interval=settings.poll_interval),
                reference=global_weights,
                expect_update=True,
            )
            _log_rejections(server_round, replies)
            if gate is not None:
                gate.learn(replies)
                gate.report(replies, server_round=server_round)
            results.record_scores(after_round=scored_round, replies=replies)
            if not replies.updates:
                fail_round(server_round, "no valid update from any hospital", replies, skipped)
                continue
            global_weights = fedavg(replies.updates)
            model_path = run_dir / "models" / f"round-{server_round}.pt"
            save_weights(global_weights, model_path)
            results.record_round(server_round=server_round, replies=replies, model_path=model_path, skipped=skipped)
            scored_round = server_round
            results.save()
            log.info("round %d: aggregated %d update(s) from %s", server_round, len(replies.updates),
                     ", ".join(u.institution for u in replies.updates))

        if scored_round == 0:
            raise RuntimeError(f"none of the {settings.num_rounds} round(s) aggregated an update; see 'rejected' per round")
        nodes = wait_for_nodes(grid, minimum=settings.min_nodes, timeout=settings.node_wait_timeout)
        content = RecordDict({"arrays": from_numpy(global_weights), "config": _message_config(settings, schema, settings.num_rounds + 1)})
        final = sort_replies(
            _exchange(grid, nodes=nodes, content=content, message_type=MessageType.EVALUATE,
                      server_round=settings.num_rounds + 1, timeout=settings.round_timeout, poll_interval=settings.poll_interval),
            reference=None,
            expect_update=False,
        )
        _log_rejections(settings.num_rounds + 1, final)
        results.record_scores(after_round=scored_round, replies=final)
        final_path = run_dir / "final_model.pt"
        save_weights(global_weights, final_path)
        results.finish(status="completed", final_model_path=final_path)
        log.info("run %d completed; final model %s", grid.run.run_id, final_path)
    except BaseException as exc:
        results.finish(status="failed", final_model_path=model_path, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if gate is not None:
            gate.close()

