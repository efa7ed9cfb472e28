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
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

from common.atomic import write_json_atomic
from fedcare.federation_dir import FederationDirError

# pending: to do at the next sync; registered/revoked: done; off: no budget service in this federation.
SuperLinkState = Literal["pending", "registered", "revoke-pending", "revoked"]
BudgetState = Literal["pending", "registered", "revoke-pending", "revoked", "off"]
# Who made the institution's node key pair: the institution itself (registered by request, the coordinator
# never saw a private key) or the coordinator (the one-step path for single-operator setups).
KeysMadeBy = Literal["institution", "coordinator"]
FORMAT = "fedcare-registry/1"


class RegistryError(FederationDirError, ValueError):
    """`registry.json` cannot be read: the message names the file, the record and the field."""


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
        try:
            raw = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise RegistryError(f"{self.path}: not valid JSON ({exc}); restore it from a backup") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise RegistryError(f"{self.path}: unknown registry format {found!r} (expected {FORMAT})")
        records = raw.get("institutions")
        if not isinstance(records, dict):
            raise RegistryError(f"{self.path}: 'institutions' must be an object of records by slug")
        self.institutions = {slug: _record(self.path, slug, rec) for slug, rec in records.items()}

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


def _accepts(hint: object, value: object) -> bool:
    """Whether a JSON value fits a field's declared type (bools are not numbers here)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (Union, UnionType):
        return any(_accepts(arg, value) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_accepts(args[0], v) for v in value)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _record(path: Path, slug: str, raw: object) -> InstitutionRecord:
    """One record, checked against InstitutionRecord's fields: a damaged file is named, not a crash later."""
    where = f"{path}: institution {slug!r}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where} is {type(raw).__name__}, not an object")
    declared = {f.name: f for f in fields(InstitutionRecord)}
    required = {n for n, f in declared.items() if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(raw) - set(declared)), sorted(required - set(raw))
    if unknown or missing:
        raise RegistryError(f"{where}: unknown field(s) {unknown}, missing field(s) {missing}")
    hints = get_type_hints(InstitutionRecord)
    for name, value in raw.items():
        if not _accepts(hints[name], value):
            raise RegistryError(f"{where}: {name} is {value!r}, which does not fit its type {declared[name].type}")
    return InstitutionRecord(**raw)
