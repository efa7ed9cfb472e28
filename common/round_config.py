"""The round config: what every train or evaluate message tells a hospital, typed at both ends.

The server builds it from its `RunSettings`; the hospital parses it with `RoundConfig.from_config`
and nothing else, so no handler re-reads a key by hand (`int(c["batch-size"])`). Its fields are
`TrainingSettings`' (declared once in `common.settings`) plus the round number and the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, Json, ValidationError

from common.schema import DatasetSchema
from common.settings import RunSettings, SettingsError, TrainingSettings, describe_validation_error


class RoundConfig(TrainingSettings):
    """The run's training settings for one round, as the hospital trains with them."""

    model_config = ConfigDict(frozen=True)

    server_round: int = Field(ge=1)
    # Travels as a JSON string: a Flower ConfigRecord holds scalars and lists only.
    dataset_schema: Json[DatasetSchema] = Field(alias="schema")
    # HE mode: the key set of the run's public context, so a hospital holding another one refuses by
    # name instead of encrypting under it. Empty in the other modes.
    he_key_id: str = ""
    # The fedcare run id (docs/resume.md): the hospital files its DP event under it, not under the Flower run
    # id of this submission, so a resumed run's rounds are charged and recorded once. Empty: the Flower run id.
    fedcare_run_id: str = Field(default="", pattern=r"^[0-9]*$")

    @classmethod
    def for_round(
        cls, settings: RunSettings, *, schema: DatasetSchema, server_round: int, run_id: int | None = None
    ) -> RoundConfig:
        """The server's side: this run's training settings for `server_round` of fedcare run `run_id`."""
        training = settings.model_dump(include=set(TrainingSettings.model_fields))
        return cls.model_validate(
            {
                **training,
                "server_round": server_round,
                "dataset_schema": schema.model_dump_json(),
                "fedcare_run_id": "" if run_id is None else str(run_id),
            }
        )

    def run_id_or(self, flower_run_id: int) -> int:
        """The fedcare run id this round belongs to (`flower_run_id`: the message's, when the server sent none)."""
        return int(self.fedcare_run_id) if self.fedcare_run_id else flower_run_id

    def as_config(self) -> dict[str, Any]:
        """The kebab-case scalars a Flower ConfigRecord carries (the schema as JSON)."""
        return self.model_dump(by_alias=True, round_trip=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoundConfig:
        """The hospital's side: the message's config, every key required.

        No defaults are filled in here: a key the server did not send means the coordinator runs a
        different fedcare version, and training with a guessed value would be worse than refusing.
        """
        expected = {field.alias or name for name, field in cls.model_fields.items()}
        missing = sorted(expected - set(config))
        if missing:
            raise SettingsError(
                f"round config from the server lacks {', '.join(missing)}: the coordinator and this hospital "
                "run different fedcare versions; update the older side"
            )
        try:
            return cls.model_validate(dict(config))
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc, "round config from the server")) from exc
