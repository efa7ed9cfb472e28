"""The roster: who receives the federation's CKKS secret, and the public key to seal it to.

The coordinator writes it from the registry (`fedcare he roster`): every active institution
that registered by request, with its sealing public key. Everything in it is public. The
hospital that makes the key set seals the secret context to each entry; the coordinator's relay
accepts a key set only if it was made for the current roster, so a revoked hospital drops out
of the next key set and a stale one is not relayed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from fedcare.federation_dir import FederationDir
from fedcare.json_files import read_json_object
from fedcare.registry import Registry, now
from fedcare.sealing import SealingError, decode_public_key

ROSTER_FORMAT = "fedcare-he-roster/1"
ROSTER_FILE = "roster.json"


class RosterError(ValueError):
    """A roster that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class RosterEntry:
    institution: str
    slug: str
    sealing_public_key: str
    node_key_fingerprint: str

    def to_json(self) -> dict[str, str]:
        return {
            "institution": self.institution,
            "slug": self.slug,
            "sealing-public-key": self.sealing_public_key,
            "node-key-fingerprint": self.node_key_fingerprint,
        }


@dataclass(frozen=True)
class Roster:
    entries: tuple[RosterEntry, ...]
    created_at: str
    skipped: tuple[str, ...] = ()  # active institutions without a sealing key (one-step registrations)

    @property
    def roster_id(self) -> str:
        """Names exactly who is in it with which key: a key set is made for one roster id."""
        canonical = json.dumps([e.to_json() for e in self.entries], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def slugs(self) -> list[str]:
        return [e.slug for e in self.entries]

    def entry_for(self, institution: str) -> RosterEntry | None:
        return next((e for e in self.entries if e.institution == institution), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ROSTER_FORMAT,
            "roster-id": self.roster_id,
            "created-at": self.created_at,
            "institutions": [e.to_json() for e in self.entries],
            "skipped": list(self.skipped),
        }


def roster_path(fed: FederationDir) -> Path:
    return fed.he_dir / ROSTER_FILE


def build_roster(fed: FederationDir) -> Roster:
    """The roster as the registry says now: active institutions with a sealing key, in slug order."""
    records = sorted(Registry(fed.registry_path).snapshot().values(), key=lambda r: r.slug)
    entries = tuple(
        RosterEntry(r.name, r.slug, r.sealing_public_key, r.fingerprint)
        for r in records
        if r.active and r.sealing_public_key
    )
    skipped = tuple(r.name for r in records if r.active and not r.sealing_public_key)
    return Roster(entries, created_at=now(), skipped=skipped)


def write_roster(fed: FederationDir) -> tuple[Path, Roster]:
    roster = build_roster(fed)
    if not roster.entries:
        raise RosterError(
            f"no active institution of {fed.root} registered by request, so nobody could receive a CKKS key "
            "(hospitals run `fedcare institution join`, the coordinator `fedcare institution register --request`)"
        )
    path = roster_path(fed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, roster.to_json())
    path.chmod(0o644)
    return path, roster


def read_roster(path: Path) -> Roster:
    """A roster file, every field checked (it came from the coordinator: check what is used)."""
    path = Path(path)
    raw = read_json_object(
        path, error=RosterError, missing=f"{path}: no such roster (the coordinator writes it with `fedcare he roster`)"
    )
    if raw.get("format") != ROSTER_FORMAT:
        raise RosterError(f"{path}: field 'format' is not {ROSTER_FORMAT!r}")
    items = raw.get("institutions")
    if not isinstance(items, list) or not items:
        raise RosterError(f"{path}: field 'institutions' must be a non-empty list")
    entries = []
    for i, item in enumerate(items):
        where = f"{path}: institutions[{i}]"
        if not isinstance(item, dict):
            raise RosterError(f"{where} is not an object")
        values = {}
        for name in ("institution", "slug", "sealing-public-key", "node-key-fingerprint"):
            if not isinstance(item.get(name), str) or not item[name]:
                raise RosterError(f"{where}: field {name!r} is missing or not a string")
            values[name] = item[name]
        try:
            decode_public_key(values["sealing-public-key"], where=f"{where}: field 'sealing-public-key'")
        except SealingError as exc:
            raise RosterError(str(exc)) from None
        entries.append(
            RosterEntry(
                values["institution"], values["slug"], values["sealing-public-key"], values["node-key-fingerprint"]
            )
        )
    roster = Roster(tuple(entries), created_at=str(raw.get("created-at", "")), skipped=tuple(raw.get("skipped", ())))
    if raw.get("roster-id") != roster.roster_id:
        raise RosterError(f"{path}: field 'roster-id' does not match its institutions (the file was edited)")
    return roster
