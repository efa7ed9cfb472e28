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
from client.kept_update import KeptUpdate, keep_update, kept_update
from client.local_workers_error import LocalWorkersError
from client.mixed_precision import DPConfigError
from client.refusals import RoundRefused
from client.secret_context import secret_context_for
from client.step_clock import StepClock, clock_for
from client.task_data import load_task_data, summed, task_loss
from client.training import Score, TrainingOutcome, evaluate, pick_device, train_plain
from common.codecs import InvalidUpdate, check_update, from_numpy, to_numpy, to_record, to_state_dict
from common.data import HospitalData, split_train_validation
from common.dp_event import DPEvent
from common.institution import institution_name
from common.int8_wire import FLOAT_RECORD, put_weights, take_weights
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


def _incoming_weights(
    msg: Message,
    *,
    model: nn.Module,
    secret_context: ts.Context | None,
    server_round: int,
    run_id: int,
    optimizer: ServerOptimizer | None = None,
) -> OrderedDict[str, np.ndarray]:
    """The global model in the message, checked against this hospital's model: plaintext weights, or
    in HE mode the server's encrypted sum of an earlier round of this run, decrypted and divided here,
    then moved by the run's server optimizer (`optimizer` takes up the state the sum carries)."""
    reference = to_numpy(to_record(model.state_dict()))
    content = msg.content
    if secret_context is not None and FLOAT_RECORD not in content:
        from common.he.carried import carry_template, next_global
        from common.he.hospital import decrypt_sum
        from common.he.wire import InvalidCiphertext, take_bundle

        optimizer = optimizer or ServerOptimizer()  # FedAvg: the sum is the model's own layout

        try:
            bundle = take_bundle(content)
            h = bundle.header
            if h.run_id != run_id or not 1 <= h.server_round < server_round:
                raise InvalidCiphertext(
                    f"the encrypted model is from run {h.run_id} round {h.server_round}; expected "
                    f"run {run_id}, a round before {server_round}"
                )
            averaged = decrypt_sum(bundle, context=secret_context, template=carry_template(reference, optimizer))
            weights = next_global(averaged, model=reference, optimizer=optimizer)
        except (InvalidCiphertext, ValueError) as exc:  # ValueError: carried optimizer state that does not fit
            raise InvalidUpdate(f"encrypted global model rejected: {exc}") from exc
        check_update(weights, reference=reference)
        return weights
    return take_weights(content, reference=reference, missing="the message carries no global model")  # float32 or int8


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
    # HE mode: the server optimizer as this hospital stepped it, and the global model it produced (the base
    # the update is trained from); both go back inside the encrypted update (common/he/carried.py).
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
        if config.dp and msg.metadata.message_type.startswith("train"):
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
            weights = _incoming_weights(
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
            global_weights=weights if optimizer is not None else None,
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
                event = self._commit_spending()  # one DP event for the round, however many workers train it
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

    def _commit_spending(self) -> DPEvent:
        from client.dp_training import plan_round
        from client.noise_plan import run_noise_multiplier

        assert self.accountant is not None
        c = self.config
        sample_rate, steps = plan_round(  # the scheduled steps: the loop takes exactly these (dp_training)
            num_examples=len(self.train_data), batch_size=c.batch_size, epochs=c.local_epochs, max_steps=self.max_steps
        )
        full = plan_round(num_examples=len(self.train_data), batch_size=c.batch_size, epochs=c.local_epochs)[1]
        accountant_name, delta = c.accountant, c.delta
        if c.target_epsilon > 0:
            # Chosen once for the whole run's planned steps: re-targeting every round overshoots.
            assert self.node.state_dir is not None  # filled in by NodeSettings
            noise = run_noise_multiplier(
                state_dir=self.node.state_dir,
                target_epsilon=c.target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=full * c.num_rounds,  # the run's unscheduled plan: a shorter round only spends less
                accountant=accountant_name,
            )
        else:
            noise = c.noise_multiplier
        projected = self.accountant.projected_epsilon(
            noise_multiplier=noise, sample_rate=sample_rate, steps=steps, accountant=accountant_name, delta=delta
        )
        limit = self.node.epsilon_limit
        if limit is not None and projected > limit:
            spent = self.accountant.epsilon(accountant=accountant_name, delta=delta)
            raise RoundRefused(
                code="budget-exhausted",
                reason=(
                    f"this round would raise epsilon from {spent:.3f} to {projected:.3f}, above the limit {limit:g}; "
                    "no training done, nothing sent"
                ),
                institution=self.institution,
                details={"epsilon": spent, "epsilon-limit": limit},
            )
        event = DPEvent(
            noise_multiplier=noise,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant_name,
            epsilon=projected,
            delta=delta,
            run_id=self.run_id,
            server_round=c.server_round,
        )
        self.accountant.commit(event)
        log.info(
            "[%s] round %s: epsilon %.3f after this round (committed to %s)",
            self.institution,
            c.server_round,
            projected,
            self.accountant.path,
        )
        return event

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

    def put_update(self, content: RecordDict) -> int:
        """Put the trained weights into the reply: plaintext, or in HE mode encrypted (times the sample
        count, so the server's sum is the FedAvg numerator). Returns the bytes of the update."""
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
            weights = pack(trained=weights, base=self.global_weights, optimizer=self.server_optimizer)
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

    def ok_status(self) -> dict[str, Any]:
        return {"ok": True, "institution": self.institution}
