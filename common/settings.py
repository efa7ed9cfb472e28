"""Typed run settings, read once from Flower's run config (kebab-case keys in pyproject.toml).

One object flows through the ServerApp; the parts the hospitals need travel to
them inside each message's config, so both sides agree on one set of values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SettingsError(ValueError):
    """A run or node setting that is missing or out of range."""


class RunSettings(BaseModel):
    """What the coordinator chooses for a run."""

    model_config = ConfigDict(alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True, extra="forbid")

    num_rounds: int = Field(default=5, ge=1)
    local_epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_nodes: int = Field(default=2, ge=1)
    node_wait_timeout: float = Field(default=120.0, gt=0)
    round_timeout: float = Field(default=600.0, gt=0)
    seed: int = 42
    schema_path: str
    results_dir: str = "fedcare-runs"

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        try:
            settings = cls.model_validate(dict(run_config))
        except ValidationError as exc:
            raise SettingsError(_describe(exc, "run config")) from exc
        if not settings.schema_path:
            raise SettingsError("run config: 'schema-path' is empty; point it at the federation's schema JSON")
        return settings


class NodeSettings(BaseModel):
    """What a hospital sets for its own SuperNode (`--node-config`)."""

    model_config = ConfigDict(alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True, extra="ignore")

    institution: str = Field(min_length=1)
    data_path: Path

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        try:
            return cls.model_validate(dict(node_config))
        except ValidationError as exc:
            raise SettingsError(_describe(exc, "node config")) from exc


def _describe(exc: ValidationError, where: str) -> str:
    return f"{where}: " + "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
