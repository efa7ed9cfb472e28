"""Everything one hospital does in one message: load data, rebuild the model, train, score.

The model is rebuilt from the global weights every time: each message runs in a
fresh process anyway, and a fresh module is what Opacus needs (hooks cannot be
attached twice, and wrapped modules rename their keys).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from torch import nn

from client.accountant_state import AccountantStateError, HospitalAccountant
from client.incoming_model import incoming_weights
from client.kept_update import KeptUpdate, keep_update, kept_update
from client.local_workers_error import LocalWorkersError
from client.mixed_precision import DPConfigError
from client.refusals import RoundRefused
from client.round_spending import commit_round_spending
from client.secret_context import secret_context_for
from client.step_clock import StepClock, clock_for
from client.task_data import load_task_data, summed, task_loss
from client.training import Score, TrainingOutcome, evaluate, pick_device, train_plain
from common.codecs import InvalidUpdate, from_numpy, to_numpy, to_record, to_state_dict
from common.data import HospitalData, split_train_validation
from common.dp_event import DPEvent
from common.institution import institution_name
from common.int8_wire import put_weights
from common.round_config import RoundConfig
from common.schema import SchemaError
from common.server_optimizer import ServerOptimizer
from common.settings import NodeSettings, SettingsError
from common.site_work import Schedule, WorkReportError, read_schedule
from common.tasks.model_task import TaskError, build_task_model
from common.wire_bytes import content_bytes

log = logging.getLogger("flwr.fedcare.client")

if TYPE_CHECKING:
    import tenseal as ts

__all__ = ["LocalRound", "RoundRefused"]  # RoundRefused is re-exported: the handlers catch it from here


@dataclass
class LocalRound:
    institution: str
    node: NodeSettings
    run_id: int
    config: RoundConfig
    train_data: HospitalData
    validation_data: HospitalData
    model: nn.Module
    device: torch.device
    accountant: HospitalAccountant | None = field(default=None)
    secret_context: ts.Context | None = field(default=None, repr=False)  # HE mode: the federation's secret context
    # HE mode: the server optimizer as this hospital stepped it; it goes back inside the encrypted update with the
    # global model (common/he/carried.py). The global model as received (the base the update is trained from) is
    # also what a FedNova update is taken from in HE and SecAgg+ (common/fednova_sum.py).
    server_optimizer: ServerOptimizer | None = field(default=None, repr=False)
    global_weights: OrderedDict[str, np.ndarray] | None = field(default=None, repr=False)
    loss: nn.Module | None = field(default=None)  # the task's loss; None: cross-entropy
    # The server's schedule for this round (round-deadline, docs/compute.md): at most so many local steps, and
    # stop when the round would overrun the deadline (`stop_at`, monotonic seconds, set by the train handler).
    schedule: Schedule | None = field(default=None)
    stop_at: float | None = field(default=None)
    train_seconds: float = field(default=0.0)  # the local steps' seconds (`train`), for the work report
    step_seconds: float = field(default=0.0)  # the median step's

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> LocalRound:
        institution = institution_name(context.node_config.get("institution"), node_id=context.node_id)
        try:
            config = RoundConfig.from_config(msg.content.get("config") or {})
            schedule = read_schedule(msg.content)
        except (SettingsError, WorkReportError) as exc:
            raise RoundRefused(code="bad-round-config", reason=str(exc), institution=institution) from exc
        try:
            # The run's pinned task, built (and made DP-compatible) as the server built it; refused on a mismatch.
            model = build_task_model(config.dataset_schema)
            loss = task_loss(config.dataset_schema)
        except TaskError as exc:
            raise RoundRefused(code="task-mismatch", reason=str(exc), institution=institution) from exc
        try:
            node = NodeSettings.from_node_config(context.node_config)
            data = load_task_data(node.data_path, config.dataset_schema)
            train_data, validation_data = split_train_validation(
                data, validation_fraction=config.validation_fraction, seed=config.seed
            )
        except (SettingsError, SchemaError, TaskError) as exc:
            raise RoundRefused(code="bad-local-data", reason=str(exc), institution=institution) from exc

        accountant = None
        # Train messages commit to it; the final scoring's reply resends what the run's rounds committed.
        if config.dp and msg.metadata.message_type.startswith(("train", "evaluate")):
            try:
                assert node.state_dir is not None  # filled in by NodeSettings
                accountant = HospitalAccountant.for_institution(node.state_dir, institution)
            except AccountantStateError as exc:
                raise RoundRefused(code="accountant-state-error", reason=str(exc), institution=institution) from exc

        secret_context = None
        if config.privacy_mode == "he":
            secret_context = secret_context_for(node, institution, run_key_id=config.he_key_id or None)
        device = pick_device()
        run_id = config.run_id_or(msg.metadata.run_id)  # a resumed run keeps its first id (docs/resume.md)
        optimizer = ServerOptimizer.from_settings(config) if secret_context is not None else None
        try:
            weights = incoming_weights(
                msg,
                model=model,
                secret_context=secret_context,
                server_round=config.server_round,
                run_id=run_id,
                optimizer=optimizer,
            )
        except InvalidUpdate as exc:
            raise RoundRefused(code="bad-global-model", reason=str(exc), institution=institution) from exc
        model.load_state_dict(to_state_dict(from_numpy(weights)))
        return cls(
            institution=institution,
            node=node,
            run_id=run_id,
            config=config,
            train_data=train_data,
            validation_data=validation_data,
            model=model.to(device),
            device=device,
            accountant=accountant,
            secret_context=secret_context,
            server_optimizer=optimizer,
            global_weights=weights,
            loss=loss,
            schedule=schedule,
        )

    @property
    def max_steps(self) -> int | None:
        return None if self.schedule is None else self.schedule.local_steps

    @property
    def train_examples(self) -> int:
        return len(self.train_data)

    def score(self) -> Score:
        criterion = None if self.loss is None else summed(self.loss)
        return evaluate(self.model, self.validation_data, device=self.device, criterion=criterion)

    def train(self) -> tuple[TrainingOutcome, DPEvent | None]:
        """Train locally; with DP the round's spending is committed to disk first."""
        # Imported here: Opacus is heavy, and evaluate messages (a fresh process each) never need it.
        from client.dp_training import train_private

        c = self.config
        common = {
            "batch_size": c.batch_size,
            "epochs": c.local_epochs,
            "learning_rate": c.learning_rate,
            "amp": c.amp,
            "device": self.device,
            "seed": c.seed + c.server_round,
            "criterion": self.loss,
            "max_steps": self.max_steps,  # the loop also stops at `stop_at` (client/step_clock.py)
        }
        clock = clock_for(self.node, institution=self.institution, local_workers=c.local_workers, stop_at=self.stop_at)
        started = time.monotonic()
        try:
            if self.accountant is None:
                log.warning(
                    "[%s] DIFFERENTIAL PRIVACY IS OFF for this run: the update carries no DP guarantee",
                    self.institution,
                )
                if c.local_workers > 1:
                    log.info(
                        "[%s] local-workers applies to DP-SGD; this dp = false round trains in one process",
                        self.institution,
                    )
                outcome = train_plain(self.model, self.train_data, after_step=clock, **common)
                self._timed(clock, started=started, steps=outcome.steps)
                return outcome, None
            assert self.node.state_dir is not None  # filled in by NodeSettings
            event = self.accountant.recorded(run_id=self.run_id, server_round=c.server_round)
            if event is not None:  # a resumed run asks again for a round this hospital was charged for
                kept = kept_update(self.node.state_dir, run_id=self.run_id, server_round=c.server_round)
                if kept is not None:
                    log.warning(
                        "[%s] round %d of run %d was trained and charged before the coordinator's crash: sending "
                        "the same update again, nothing new spent",
                        *(self.institution, c.server_round, self.run_id),
                    )
                    self.model.load_state_dict(to_state_dict(from_numpy(kept.weights)))
                    return kept.outcome, event
                log.warning(
                    "[%s] round %d of run %d was charged but its update never left: training it under that charge",
                    *(self.institution, c.server_round, self.run_id),
                )
            else:
                event = commit_round_spending(  # one DP event for the round, however many workers train it
                    self.accountant,
                    config=c,
                    node=self.node,
                    institution=self.institution,
                    run_id=self.run_id,
                    num_examples=self.train_examples,
                    max_steps=self.max_steps,
                )
            dp_options = {"noise_multiplier": event.noise_multiplier, "max_grad_norm": c.max_grad_norm}
            if c.local_workers > 1:
                from client.ddp_workers import WORKER_TIMEOUT_S, train_private_workers

                outcome = train_private_workers(
                    self.model,
                    self.train_data,
                    workers=c.local_workers,
                    timeout_s=WORKER_TIMEOUT_S,
                    grad_sample_mode=c.grad_sample_mode,
                    **dp_options,
                    **common,
                )
            else:
                outcome = train_private(
                    self.model,
                    self.train_data,
                    grad_sample_mode=c.grad_sample_mode,
                    after_step=clock,
                    **dp_options,
                    **common,
                )
        except DPConfigError as exc:
            raise RoundRefused(code="bad-dp-config", reason=str(exc), institution=self.institution) from exc
        except LocalWorkersError as exc:
            raise RoundRefused(code="local-workers-failed", reason=str(exc), institution=self.institution) from exc
        self._timed(clock, started=started, steps=outcome.steps)
        taken = outcome.steps + outcome.skipped_steps  # Poisson batches drawn; fewer than planned: stopped at deadline
        if 1 <= taken < event.steps and self.accountant is not None:
            try:
                event = self.accountant.amend_to_steps_taken(event, steps=taken)
            except AccountantStateError as exc:  # the planned count stands: over-counting is safe
                log.warning(
                    "[%s] the round's DP event keeps its planned %d steps: %s", self.institution, event.steps, exc
                )
        if outcome.steps > event.steps:
            # Never let an update out that spent more than the ledger says.
            raise RoundRefused(
                code="accounting-mismatch",
                reason=f"training took {outcome.steps} noisy steps but only {event.steps} were recorded",
                institution=self.institution,
            )
        weights = to_numpy(to_record(self.model.state_dict()))
        keep_update(self.node.state_dir, KeptUpdate(self.run_id, c.server_round, weights, outcome))
        return outcome, event

    def _timed(self, clock: StepClock | None, *, started: float, steps: int) -> None:
        """The steps' time for the work report; with local workers (no clock) the loop's wall time."""
        if clock is not None and clock.steps:
            self.train_seconds, self.step_seconds = clock.seconds, clock.median_step
        else:
            self.train_seconds = time.monotonic() - started
            self.step_seconds = self.train_seconds / steps if steps else 0.0

    def train_metrics(self, outcome: TrainingOutcome, before: Score) -> MetricRecord:
        """What a train reply reports in clear: sample count, and with per-site metrics the training loss and
        the incoming model's scores (otherwise they travel inside the aggregate: client/metrics_report.py)."""
        if not self.config.per_site_metrics:
            return MetricRecord({"num-examples": self.train_examples})
        return MetricRecord(
            {
                "num-examples": self.train_examples,
                "train-loss": outcome.loss,
                "skipped-steps": outcome.skipped_steps,
                "eval-loss": before.loss,
                "eval-accuracy": before.accuracy,
                "eval-examples": before.examples,
            }
        )

    def put_update(self, content: RecordDict, *, fednova_steps: int | None = None) -> int:
        """Put the trained weights into the reply: plaintext, or in HE mode encrypted (times the sample
        count, so the server's sum is the FedAvg numerator). Returns the bytes of the update.
        `fednova_steps` (HE with round-deadline): the update is encrypted as its per-step model."""
        if self.secret_context is None:
            put_weights(
                content, to_numpy(to_record(self.model.state_dict())), compression=self.config.update_compression
            )
            return content_bytes(content)
        from common.he.carried import pack
        from common.he.hospital import encrypt_update
        from common.he.wire import put_bundle

        weights = to_numpy(to_record(self.model.state_dict()))
        if self.server_optimizer is not None and self.global_weights is not None:
            weights = pack(
                trained=weights, base=self.global_weights, optimizer=self.server_optimizer, local_steps=fednova_steps
            )
        try:
            bundle = encrypt_update(
                weights,
                num_examples=self.train_examples,
                context=self.secret_context,
                run_id=self.run_id,
                server_round=self.config.server_round,
            )
        except ValueError as exc:  # NaN weights, or values beyond what the CKKS parameters hold
            raise RoundRefused(code="cannot-encrypt", reason=str(exc), institution=self.institution) from exc
        put_bundle(content, bundle)
        return bundle.nbytes

    def earlier_events(self, *, before_round: int) -> list[DPEvent]:
        """This run's events committed before `before_round` (common.dp_event.EARLIER_RECORD says why they travel)."""
        if self.accountant is None:
            return []
        records = [r for r in self.accountant.events if str(r.get("run_id")) == str(self.run_id)]
        return [DPEvent.from_record(r) for r in records if int(r.get("server_round", 0)) < before_round]

    def ok_status(self) -> dict[str, Any]:
        return {"ok": True, "institution": self.institution}
