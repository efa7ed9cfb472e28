"""A hospital's refusal to take part in a round: a code the server can act on, and a reason a person can."""

from __future__ import annotations

from typing import Any


class RoundRefused(RuntimeError):
    """The hospital cannot take part in this round; `code` tells the server why."""

    def __init__(self, *, code: str, reason: str, institution: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{institution}] {code}: {reason}")
        self.code, self.reason, self.institution = code, reason, institution
        self.details = details or {}

    def as_status(self) -> dict[str, Any]:
        return {"ok": False, "code": self.code, "reason": self.reason, "institution": self.institution, **self.details}
