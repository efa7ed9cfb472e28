"""How a hospital answers a train message: one flow for the plain/HE handler and SecAgg+'s masked stage.

Score the incoming global model, train (with DP, the round's spending is committed to disk
first), and put what travels in clear next to the update: metrics (per-site mode) or the federation
figures decrypted from the last aggregate (HE aggregate mode), status, the DP event.
The refusal rule lives here once: a round refused *after* training still carries its DP
event, so the server's ledger records spending the local accountant already holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.local_round import LocalRound, RoundRefused
from client.metrics_report import put_encrypted_metrics, put_figures, received_figures, site_metrics
from common.dp_event import EARLIER_RECORD, DPEvent, earlier_events_record
from common.site_metrics import FederationFigures, SiteMetrics
from common.site_work import WORK_RECORD, SiteWork

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


def put_earlier_events(content: RecordDict, local: LocalRound, *, before_round: int) -> None:
    """Resend the run's events committed before `before_round` (common.dp_event.EARLIER_RECORD says why)."""
    earlier = local.earlier_events(before_round=before_round)
    if earlier:
        content[EARLIER_RECORD] = ConfigRecord(earlier_events_record(earlier))


@dataclass
class TrainedRound:
    """A round trained at this hospital, its update not yet in a reply."""

    local: LocalRound
    metrics: MetricRecord  # what travels in clear
    event: DPEvent | None  # None without DP
    site: SiteMetrics | None  # aggregate mode: travels only inside the aggregate; None with per-site metrics
    figures: FederationFigures | None = None  # decrypted from the last round's encrypted metrics sum (HE)
    # Steps, times and capabilities, for the server's deadline scheduling and results.json: sent with per-site
    # metrics (plain mode) or when the server scheduled this round; not in aggregate mode otherwise.
    work: SiteWork | None = None

    @property
    def fednova_steps(self) -> int | None:
        """With round-deadline and a FedNova deadline-aggregation in a mode whose server sees only a sum (HE,
        SecAgg+): the steps this update is divided by before it enters the sum, as the work report says
        (common/fednova_sum.py). None: plain mode (the server divides each update itself), no deadline, or
        deadline-aggregation "fedavg" (the trained model enters the sum as it is). Raises RoundRefused for a
        round that took no step."""
        c = self.local.config
        if self.local.schedule is None or c.privacy_mode == "plain" or not c.normalises_steps:
            return None
        steps = self.work.local_steps if self.work is not None else 0
        if steps < 1:
            raise RoundRefused(
                code="no-local-steps",
                reason="the round took no optimizer step before its deadline, so there is no per-step update to send "
                "(FedNova divides by the steps); raise round-deadline",
                institution=self.local.institution,
            )
        return steps

    def put_update(self, content: RecordDict) -> None:
        """The update (plaintext or encrypted) and, in HE aggregate mode, the encrypted metrics beside it."""
        self.local.put_update(content, fednova_steps=self.fednova_steps)
        if self.local.secret_context is not None and self.site is not None:
            put_encrypted_metrics(content, self.local, self.site)

    def reply(self, msg: Message, content: RecordDict) -> Message:
        """`content` (holding the update) with the round's metrics, status and DP event."""
        content["metrics"] = self.metrics
        put_figures(content, self.figures)
        content["status"] = ConfigRecord(self.local.ok_status())
        if self.event is not None:
            content["dp-event"] = ConfigRecord(self.event.as_record())
            put_earlier_events(content, self.local, before_round=self.event.server_round)
        if self.work is not None:
            content[WORK_RECORD] = ConfigRecord(self.work.as_record())
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
    from client.site_report import full_steps, work_report

    started = time.monotonic()
    local = LocalRound.from_message(msg, context)
    if local.schedule is not None:
        local.stop_at = started + local.schedule.deadline
    figures = received_figures(msg, local)
    before = local.score()
    aggregate = not local.config.per_site_metrics
    if aggregate:
        site_metrics(local, before)  # scores the sum could not carry refuse the round before any spending
    if before_training is not None:
        before_training(local)
    outcome, event = local.train()
    c = local.config
    work = None
    if c.per_site_metrics or local.schedule is not None:  # aggregate mode keeps even its times to itself
        work = work_report(
            outcome,
            full=full_steps(num_examples=local.train_examples, batch_size=c.batch_size, epochs=c.local_epochs, dp=c.dp),
            batch_size=c.batch_size,
            train_seconds=local.train_seconds,
            step_seconds=local.step_seconds,
            round_seconds=time.monotonic() - started,
            device=local.device,
        )
    return TrainedRound(
        local=local,
        metrics=local.train_metrics(outcome, before),
        event=event,
        site=site_metrics(local, before, outcome) if aggregate else None,  # checked above: cannot refuse now
        figures=figures,
        work=work,
    )
