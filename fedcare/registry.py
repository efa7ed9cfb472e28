"""The federation's registry of institutions (`DIR/registry.json`): who is registered where, what is pending.

Registration has two remote halves (the SuperLink's node list, the budget
service's institutions) that may be down when the coordinator registers a
hospital. The registry records each half's state, so `fedcare federation sync`
(or starting the federation) can finish exactly what is left. It is small
JSON, rewritten atomically under an exclusive lock, so two commands never
lose each other's changes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from common.atomic import write_json_atomic

# pending: to do at the next sync; registered/revoked: done; off: no budget service in this federation.
SuperLinkState = Literal["pending", "registered", "revoke-pending", "revoked"]
BudgetState = Literal["pending", "registered", "revoke-pending", "revoked", "off"]
# Who made the institution's node key pair: the institution itself (registered by request, the coordinator
# never saw a private key) or the coordinator (the one-step path for single-operator setups).
KeysMadeBy = Literal["institution", "coordinator"]
FORMAT = "fedcare-registry/1"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class InstitutionRecord:
    name: str
    slug: str
    epsilon_limit: float
    delta: float
    fingerprint: str  # of the node public key now in the kit
    superlink: SuperLinkState = "pending"
    node_id: int | None = None
    stale_node_ids: list[int] = field(default_factory=list)  # old keys (rotation, revocation) still to unregister
    budget: BudgetState = "pending"
    budget_institution_id: int | None = None
    token_rotation_pending: bool = False  # a new budget token must be issued at the next sync (rotation)
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    revoked_at: str | None = None
    keys_made_by: KeysMadeBy = "coordinator"  # records made before requests existed were all the coordinator's
    sealing_public_key: str | None = None  # base64 X25519: secrets for this institution are sealed to it

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def pending(self) -> list[str]:
        """What is left to do remotely, in words."""
        todo = []
        if self.superlink == "pending":
            todo.append("SuperLink: register node key")
        if self.superlink == "revoke-pending" or self.stale_node_ids:
            todo.append(f"SuperLink: unregister node(s) {', '.join(map(str, self.stale_node_ids)) or self.node_id}")
        if self.budget == "pending":
            todo.append("budget service: register institution and issue its token")
        elif self.token_rotation_pending:
            todo.append("budget service: issue a new token")
        if self.budget == "revoke-pending":
            todo.append("budget service: disable token")
        return todo


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.institutions: dict[str, InstitutionRecord] = {}

    def _load(self) -> None:
        if not self.path.exists():
            self.institutions = {}
            return
        raw = json.loads(self.path.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unknown registry format {raw.get('format')!r} (expected {FORMAT})")
        self.institutions = {slug: InstitutionRecord(**rec) for slug, rec in raw["institutions"].items()}

    def _save(self) -> None:
        write_json_atomic(
            self.path, {"format": FORMAT, "institutions": {s: asdict(r) for s, r in sorted(self.institutions.items())}}
        )

    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """Load, let the caller change records, save: all under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield self
                self._save()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def snapshot(self) -> dict[str, InstitutionRecord]:
        """A read-only view: reads the file (atomically replaced by writers, so never torn), writes nothing."""
        self._load()
        return dict(self.institutions)
