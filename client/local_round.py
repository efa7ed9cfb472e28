"""Everything one hospital does in one message: load data, rebuild the model, train, score.

The model is rebuilt from the global weights every time: each message runs in a
fresh process anyway, and a fresh module is what Opacus needs (hooks cannot be
attached twice, and wrapped modules rename their keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from client.training import Score, evaluate, make_loader, pick_device, train_epochs
from common.codecs import InvalidUpdate, check_update, to_numpy, to_record, to_state_dict
from common.data import HospitalData, load_hospital_table, split_train_validation
from common.models import build_model
from common.schema import DatasetSchema, SchemaError
from common.settings import NodeSettings, SettingsError


class RoundRefused(RuntimeError):
    """The hospital cannot take part in this round; `code` tells the server why."""

    def __init__(self, *, code: str, reason: str, institution: str) -> None:
        super().__init__(f"[{institution}] {code}: {reason}")
        self.code, self.reason, self.institution = code, reason, institution

    def as_status(self) -> dict[str, Any]:
        return {"ok": False, "code": self.code, "reason": self.reason, "institution": self.institution}


@dataclass
class LocalRound:
    institution: str
    config: dict[str, Any]
    train_data: HospitalData
    validation_data: HospitalData
    model: nn.Module
    device: torch.device

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
            config=config,
            train_data=train_data,
            validation_data=validation_data,
            model=model.to(device),
            device=device,
        )

    @property
    def train_examples(self) -> int:
        return len(self.train_data)

    def score(self) -> Score:
        return evaluate(self.model, self.validation_data, device=self.device)

    def train(self) -> float:
        loader = make_loader(
            self.train_data,
            batch_size=int(self.config["batch-size"]),
            shuffle=True,
            seed=int(self.config["seed"]) + int(self.config["server-round"]),
        )
        optimizer = torch.optim.Adam(self.model.parameters(), lr=float(self.config["learning-rate"]))
        return train_epochs(
            self.model, loader, optimizer=optimizer, epochs=int(self.config["local-epochs"]), device=self.device
        )

    def export_weights(self) -> ArrayRecord:
        return to_record(self.model.state_dict())

    def ok_status(self) -> dict[str, Any]:
        return {"ok": True, "institution": self.institution}
