"""Everything one hospital does in one message: load data, rebuild the model, train, score.

The model is rebuilt from the global weights every time: each message runs in a
fresh process anyway, and a fresh module is what Opacus needs (hooks cannot be
attached twice, and wrapped modules rename their keys).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from client.accountant_state import AccountantStateError, DPEvent, HospitalAccountant
from client.training import Score, evaluate, pick_device
from common.codecs import InvalidUpdate, check_update, to_numpy, to_record, to_state_dict
from common.data import HospitalData, load_hospital_table, split_train_validation
from common.models import build_model
from common.schema import DatasetSchema, SchemaError
from common.settings import NodeSettings, SettingsError


class RoundRefused(RuntimeError):
    """The hospital cannot take part in this round; `code` tells the server why."""

    def __init__(self, *, code: str, reason: str, institution: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{institution}] {code}: {reason}")
        self.code, self.reason, self.institution = code, reason, institution
        self.details = details or {}

    def as_status(self) -> dict[str, Any]:
        return {"ok": False, "code": self.code, "reason": self.reason, "institution": self.institution, **self.details}


log = logging.getLogger("flwr.fedcare.client")

if TYPE_CHECKING:
    from client.dp_training import TrainingOutcome


@dataclass
class LocalRound:
    institution: str
    node: NodeSettings
    run_id: int
    config: dict[str, Any]
    train_data: HospitalData
    validation_data: HospitalData
    model: nn.Module
    device: torch.device
    accountant: HospitalAccountant | None = field(default=None)

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> LocalRound:
        institution = str(context.node_config.get("institution", f"node-{context.node_id}"))
        config = dict(msg.content["config"])
        try:
            node = NodeSettings.from_node_config(context.node_config)
            schema = DatasetSchema.model_validate_json(str(config["schema"]))
            data = load_hospital_table(node.data_path, schema)
            train_data, validation_data = split_train_validation(
                data,
                validation_fraction=float(config["validation-fraction"]),
                seed=int(config["seed"]),
            )
        except (SettingsError, SchemaError) as exc:
            raise RoundRefused(code="bad-local-data", reason=str(exc), institution=institution) from exc

        accountant = None
        if bool(config.get("dp", True)) and msg.metadata.message_type.startswith("train"):
            try:
                assert node.state_dir is not None  # filled in by NodeSettings
                accountant = HospitalAccountant.for_institution(node.state_dir, institution)
            except AccountantStateError as exc:
                raise RoundRefused(code="accountant-state-error", reason=str(exc), institution=institution) from exc

        device = pick_device()
        model = build_model(schema)
        global_weights = msg.content["arrays"]
        assert isinstance(global_weights, ArrayRecord)
        try:
            check_update(to_numpy(global_weights), reference={k: v.numpy() for k, v in model.state_dict().items()})
        except InvalidUpdate as exc:
            raise RoundRefused(code="bad-global-model", reason=str(exc), institution=institution) from exc
        model.load_state_dict(to_state_dict(global_weights))
        return cls(
            institution=institution,
            node=node,
            run_id=msg.metadata.run_id,
            config=config,
            train_data=train_data,
            validation_data=validation_data,
            model=model.to(device),
            device=device,
            accountant=accountant,
        )

    @property
    def train_examples(self) -> int:
        return len(self.train_data)

    def score(self) -> Score:
        return evaluate(self.model, self.validation_data, device=self.device)

    def train(self) -> tuple[TrainingOutcome, DPEvent | None]:
        """Train locally; with DP the round's spending is committed to disk first."""
        # Imported here: Opacus is heavy, and evaluate messages (a fresh process each) never need it.
        from client.dp_training import DPConfigError, train_plain, train_private

        c = self.config
        common = {
            "batch_size": int(c["batch-size"]),
            "epochs": int(c["local-epochs"]),
            "learning_rate": float(c["learning-rate"]),
            "amp": str(c["amp"]),
            "device": self.device,
            "seed": int(c["seed"]) + int(c["server-round"]),
        }
        try:
            if self.accountant is None:
                log.warning("[%s] DIFFERENTIAL PRIVACY IS OFF for this run: the update carries no DP guarantee", self.institution)
                return train_plain(self.model, self.train_data, **common), None
            event = self._commit_spending()
            outcome = train_private(
                self.model,
                self.train_data,
                noise_multiplier=event.noise_multiplier,
                max_grad_norm=float(c["max-grad-norm"]),
                grad_sample_mode=str(c["grad-sample-mode"]),
                **common,
            )
        except DPConfigError as exc:
            raise RoundRefused(code="bad-dp-config", reason=str(exc), institution=self.institution) from exc
        if outcome.steps > event.steps:
            # Never let an update out that spent more than the ledger says.
            raise RoundRefused(
                code="accounting-mismatch",
                reason=f"training took {outcome.steps} noisy steps but only {event.steps} were recorded",
                institution=self.institution,
            )
        return outcome, event

    def _commit_spending(self) -> DPEvent:
        from client.dp_training import plan_round
        from opacus.accountants.utils import get_noise_multiplier

        assert self.accountant is not None
        c = self.config
        sample_rate, steps = plan_round(
            num_examples=len(self.train_data), batch_size=int(c["batch-size"]), epochs=int(c["local-epochs"])
        )
        accountant_name, delta = str(c["accountant"]), float(c["delta"])
        if float(c["target-epsilon"]) > 0:
            # Chosen once for the whole run's planned steps: re-targeting every round overshoots.
            noise = float(
                get_noise_multiplier(
                    target_epsilon=float(c["target-epsilon"]),
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps * int(c["num-rounds"]),
                    accountant=accountant_name,
                )
            )
        else:
            noise = float(c["noise-multiplier"])
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
            server_round=int(c["server-round"]),
        )
        self.accountant.commit(event)
        log.info("[%s] round %s: epsilon %.3f after this round (committed to %s)", self.institution, c["server-round"], projected, self.accountant.path)
        return event

    def export_weights(self) -> ArrayRecord:
        return to_record(self.model.state_dict())

    def ok_status(self) -> dict[str, Any]:
        return {"ok": True, "institution": self.institution}
