"""The operators' SDK for the budget service (admin token): institutions, their tokens, aggregator tokens.

Used by the CLI and by registration in `fedcare/`, and by the demo and the
compose runner to mint the ServerApp's aggregator token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from server.budget_client.connection import BudgetConnection, BudgetServiceError

log = logging.getLogger("fedcare.budget.client")


@dataclass(frozen=True)
class InstitutionView:
    id: int
    name: str
    epsilon_limit: float
    delta: float
    token: str | None  # only when this call created the institution

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> InstitutionView:
        return cls(raw["id"], raw["name"], raw["epsilon_limit"], raw["delta"], raw.get("token"))


class BudgetAdmin(BudgetConnection):
    def ensure_institution(self, name: str, epsilon_limit: float, delta: float) -> InstitutionView:
        """Register `name` or return the existing one; `token` is set only when created now."""
        try:
            raw = self.request(
                "POST", "/v1/institutions", json={"name": name, "epsilon_limit": epsilon_limit, "delta": delta}
            ).json()
            return InstitutionView.from_json(raw)
        except BudgetServiceError as exc:
            if exc.status_code != 409:
                raise
        existing = self.find_institution(name)
        if existing is None:
            raise BudgetServiceError(f"institution {name!r} exists (409) but is not listed")
        if (existing.epsilon_limit, existing.delta) != (epsilon_limit, delta):
            log.warning(
                "institution %r already exists with epsilon limit %g, delta %g (asked for %g, %g); "
                "keeping the stored values",
                name,
                existing.epsilon_limit,
                existing.delta,
                epsilon_limit,
                delta,
            )
        return existing

    def find_institution(self, name: str) -> InstitutionView | None:
        """The institution registered under `name`, or None."""
        for raw in self.get_json("/v1/institutions"):
            if raw["name"] == name:
                return InstitutionView.from_json(raw | {"token": None})
        return None

    def rotate_institution_token(self, institution_id: int) -> str:
        """A new token for the institution; every earlier one stops working. Shown once."""
        return self.request("POST", f"/v1/institutions/{institution_id}/token").json()["token"]

    def revoke_institution_tokens(self, institution_id: int) -> int:
        """Disable every token of the institution; returns how many were revoked."""
        return int(self.request("DELETE", f"/v1/institutions/{institution_id}/tokens").json()["revoked"])

    def create_aggregator_token(self, name: str) -> str:
        """A new token for a ServerApp; shown once."""
        return self.request("POST", "/v1/aggregators", json={"name": name}).json()["token"]
