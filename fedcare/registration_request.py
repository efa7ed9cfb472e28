"""A hospital's registration request: the public half of what `fedcare institution join` made.

The hospital sends this file to the coordinator; everything in it is public.
The coordinator registers the node key with the SuperLink and seals the
hospital's secrets (its budget token) to the sealing key, so no private key
ever crosses between sites. Reading a request checks every field and names the
file and the field that is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from fedcare.federation_dir import slugify
from fedcare.json_files import read_json_object
from fedcare.node_keys import fingerprint
from fedcare.registry import now
from fedcare.sealing import SealingError, decode_public_key

REQUEST_FORMAT = "fedcare-registration-request/1"
REQUEST_FILE = "registration-request.json"


class RequestError(ValueError):
    """A registration request that cannot be used as it is; the message names the file and the field."""


@dataclass(frozen=True)
class RegistrationRequest:
    institution: str
    node_public_key: str  # the OpenSSH public key line, as in node.pub
    node_key_fingerprint: str
    sealing_public_key: str  # base64 X25519
    created_at: str

    @classmethod
    def new(cls, *, institution: str, node_public_key: str, sealing_public_key: str) -> RegistrationRequest:
        return cls(
            institution=institution,
            node_public_key=node_public_key.strip(),
            node_key_fingerprint=fingerprint(node_public_key.encode()),
            sealing_public_key=sealing_public_key,
            created_at=now(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REQUEST_FORMAT,
            "institution": self.institution,
            "node-public-key": self.node_public_key,
            "node-key-fingerprint": self.node_key_fingerprint,
            "sealing-public-key": self.sealing_public_key,
            "created-at": self.created_at,
        }

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        path.chmod(0o644)
        return path


def read_request(path: Path) -> RegistrationRequest:
    """The request in `path`, every field checked; RequestError names the file and the field."""
    path = Path(path)
    raw = read_json_object(
        path,
        error=RequestError,
        missing=f"{path}: no such registration request",
        remedy="; send the file `fedcare institution join` wrote",
    )

    def field(name: str) -> str:
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise RequestError(f"{path}: field {name!r} is missing or not a non-empty string")
        return value.strip()

    if raw.get("format") != REQUEST_FORMAT:
        raise RequestError(
            f"{path}: field 'format' is {raw.get('format')!r}, expected {REQUEST_FORMAT!r} "
            "(made by another fedcare version? re-run `fedcare institution join` with this one)"
        )
    institution = field("institution")
    try:
        slugify(institution)
    except ValueError as exc:
        raise RequestError(f"{path}: field 'institution': {exc}") from None
    node_public_key = field("node-public-key")
    try:
        key = load_ssh_public_key(node_public_key.encode())
    except (ValueError, IndexError) as exc:
        raise RequestError(f"{path}: field 'node-public-key' is not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise RequestError(f"{path}: field 'node-public-key' must be an ECDSA key (Flower's node authentication)")
    claimed = field("node-key-fingerprint")
    actual = fingerprint(node_public_key.encode())
    if claimed != actual:
        raise RequestError(
            f"{path}: field 'node-key-fingerprint' is {claimed}, but the key's is {actual}: the file was edited"
        )
    sealing = field("sealing-public-key")
    try:
        decode_public_key(sealing, where="field 'sealing-public-key'")
    except SealingError as exc:
        raise RequestError(f"{path}: {exc}") from None
    created_at = field("created-at")
    try:
        dt.datetime.fromisoformat(created_at)
    except ValueError:
        raise RequestError(f"{path}: field 'created-at' is {created_at!r}, not an ISO 8601 time") from None
    return RegistrationRequest(
        institution=institution,
        node_public_key=node_public_key,
        node_key_fingerprint=actual,
        sealing_public_key=sealing,
        created_at=created_at,
    )
