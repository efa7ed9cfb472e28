"""The coordinating side: a Flower ServerApp running weighted FedAvg round by round.

Built on Flower's Message API directly (not a stock Strategy) because every
reply must be validated, rejected with a reason, and written to results.json,
and because hospitals score the incoming model inside the train message. How
updates travel (plain, HE, SecAgg+) is a `server.rounds.Rounds`; this loop is the
same for all of them.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.codecs import to_numpy
from common.models import parameter_count
from common.schema import load_schema
from common.server_optimizer import server_optimizer_record
from common.settings import RunSettings
from common.tasks.model_task import pin_task
from server.attendance import Attendance
from server.budget_gate import BudgetGate
from server.local_work import LocalWorkScheduler
from server.replies import SortedReplies
from server.results import RunResults
from server.rounds import PlainRounds, RoundContext, Rounds
from server.run_progress import RunProgress, lock_run_dir

app = ServerApp()
log = logging.getLogger("flwr.fedcare.server")


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


def _log_metrics_reporting(settings: RunSettings, *, run_id: int) -> None:
    if settings.privacy_mode == "plain":
        return  # per-site by nature: the server reads each update (the PLAIN MODE warning says so)
    if settings.per_site_metrics:
        log.warning(
            'PER-SITE METRICS for run %d (asked for with metrics="per-site"): every hospital sends its own '
            "validation loss, accuracy and training loss in clear, which can reveal its label mix; "
            'metrics="aggregate" keeps them inside the %s sum',
            run_id,
            "encrypted" if settings.privacy_mode == "he" else "masked",
        )
    else:
        log.info("run %d: aggregate metrics: the server learns federation-level loss and accuracy only", run_id)


def make_rounds(ctx: RoundContext, *, weights: OrderedDict[str, np.ndarray]) -> Rounds:
    """The privacy mode's round logic, starting from `weights`; HE refuses to start with a context
    that could decrypt."""
    mode = ctx.settings.privacy_mode
    if mode == "he":
        from common.he.keys import load_server_context  # TenSEAL only where HE is used
        from server.he_rounds import HERounds

        keys = load_server_context(Path(ctx.settings.he_public_context))  # raises HEKeyError on a secret-key context
        log.info(
            "HE mode: CKKS degree %d, key set %s; the server adds ciphertexts it cannot decrypt",
            keys.params.poly_modulus_degree,
            keys.key_id,
        )
        return HERounds(ctx, keys, initial=weights)
    if mode == "secagg":
        from server.secagg_rounds import SecAggRounds  # Flower's legacy SecAgg+ corner

        return SecAggRounds.create(ctx, weights=weights)
    log.warning(
        'PLAIN MODE for run %d: the server reads each hospital\'s update (use privacy-mode "he" or '
        '"secagg" so it only sees the sum)',
        ctx.run_id,
    )
    return PlainRounds(ctx, weights)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    schema = load_schema(Path(settings.schema_path))
    run_id = settings.run_id_for(grid.run.run_id)  # a resumed run keeps its first id (docs/resume.md)
    run_dir = Path(settings.results_dir).resolve() / str(run_id)
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    run_dir_lock = lock_run_dir(run_dir)  # held until this process ends

    # The task's model factory only (never its hospital data code); the schema the hospitals receive pins
    # the task's version and architecture hash, so a site with other task code refuses instead of training it.
    schema, model = pin_task(schema, seed=settings.seed)
    log.info("task %s %s, architecture %s", schema.task_module, schema.task_version, schema.model_hash)
    weights = to_numpy(ArrayRecord(model.state_dict()))
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=run_dir)
    rounds = make_rounds(ctx, weights=weights)
    results = RunResults(
        path=run_dir / "results.json",
        run_id=run_id,
        privacy_mode=rounds.mode,
        model=schema.model,
        parameter_count=parameter_count(model),
        num_rounds=settings.num_rounds,
        dp=_dp_summary(settings),
        privacy=rounds.privacy_facts(),
        metrics="per-site" if settings.per_site_metrics else "aggregate",
        update_compression=settings.update_compression,
        server_optimizer=server_optimizer_record(settings),
    )
    if not settings.fedcare_run_id:  # a resumed run's results come back from its checkpoint below
        results.save()
    if not settings.dp:
        log.warning(
            "DIFFERENTIAL PRIVACY IS OFF for run %d (asked for with dp=false): "
            "hospitals' updates carry no DP guarantee",
            run_id,
        )
    _log_metrics_reporting(settings, run_id=run_id)
    log.info("run %d: results in %s", run_id, results.path)

    gate = None
    if settings.budget_url:
        gate = BudgetGate.connect(
            url=settings.budget_url,
            token_file=Path(settings.budget_token_file),
            outbox_dir=Path(settings.results_dir).resolve() / "budget-outbox",
            run_id=run_id,
            ca_certificate=Path(settings.budget_ca_file) if settings.budget_ca_file else None,
        )
        log.info("reporting DP events to the budget service at %s", settings.budget_url)

    progress = RunProgress.start(
        run_dir=run_dir,
        run_id=run_id,
        flower_run_id=grid.run.run_id,
        run_config=dict(context.run_config),
        resuming=bool(settings.fedcare_run_id),
        rounds=rounds,
        results=results,
        gate=gate,
    )
    results, scored_round, model_path = progress.results, progress.scored_round, progress.model_path
    attendance = Attendance()
    # round-deadline: docs/compute.md
    work = LocalWorkScheduler(deadline=settings.round_deadline, aggregation=settings.deadline_aggregation)
    try:
        for server_round in range(progress.next_round, settings.num_rounds + 1):
            nodes = attendance.wait_for_quorum(grid, minimum=settings.min_nodes, timeout=settings.node_wait_timeout)
            absent = attendance.at_start(nodes, server_round=server_round)
            skipped: dict[str, str] = {}
            scheduled = work.plan(nodes)
            if gate is not None:
                nodes, skipped = gate.select(nodes, server_round=server_round, scheduled=scheduled)
            if not nodes:
                log.error("round %d failed: every hospital is out of privacy budget", server_round)
                results.record_failed_round(
                    server_round=server_round,
                    reason="every hospital is out of privacy budget",
                    replies=SortedReplies(),
                    skipped=skipped,
                    extra={"dropped": absent, "rejoined": []},
                )
                progress.accounted(server_round, scored_round=scored_round, model_path=model_path)
                continue
            ctx.schedule_work(scheduled)
            started = time.monotonic()
            outcome = rounds.train(nodes=nodes, server_round=server_round)
            replies = outcome.replies
            work.learn(replies)
            outcome.extra |= work.round_facts(replies, round_seconds=time.monotonic() - started)
            outcome.extra |= attendance.after_round(
                server_round=server_round, absent=absent, dropouts=ctx.take_dropouts(), replies=replies
            )
            _log_rejections(server_round, replies)
            if gate is not None:
                gate.learn(replies)
                gate.report(replies, server_round=server_round)
            results.record_scores(after_round=scored_round, replies=replies)
            if not outcome.aggregated:
                log.error("round %d failed: %s; the global model is unchanged", server_round, outcome.reason)
                results.record_failed_round(
                    server_round=server_round,
                    reason=outcome.reason or "failed",
                    replies=replies,
                    skipped=skipped,
                    extra=outcome.extra,
                )
                progress.accounted(server_round, scored_round=scored_round, model_path=model_path)
                continue
            model_path = outcome.model_path
            results.record_round(
                server_round=server_round, replies=replies, model_path=model_path, skipped=skipped, extra=outcome.extra
            )
            scored_round = server_round
            progress.accounted(server_round, scored_round=scored_round, model_path=model_path)
            log.info(
                "round %d: aggregated %d update(s) from %s",
                server_round,
                len(replies.participants),
                ", ".join(replies.participants),
            )

        if scored_round == 0:
            raise RuntimeError(
                f"none of the {settings.num_rounds} round(s) aggregated an update; see 'rejected' per round"
            )
        nodes = attendance.wait_for_quorum(grid, minimum=settings.min_nodes, timeout=settings.node_wait_timeout)
        final = rounds.evaluate(nodes=nodes, server_round=settings.num_rounds + 1)
        ctx.take_dropouts()  # logged by the exchange; the final scoring goes on with whoever answers
        _log_rejections(settings.num_rounds + 1, final)
        if gate is not None:  # the last round's events a killed ClientApp never reported come with the scores
            gate.report(final, server_round=settings.num_rounds + 1)
        results.record_scores(after_round=scored_round, replies=final)
        final_path = rounds.save_final()
        results.finish(status="completed", final_model_path=final_path)
        log.info("run %d completed; final model %s", run_id, final_path)
    except BaseException as exc:
        results.finish(status="failed", final_model_path=model_path, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if gate is not None:
            gate.close()
        run_dir_lock.close()
