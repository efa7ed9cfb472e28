"""Walk a directory and find every secret in it by loading it, not by its name.

Each file is tried as a TenSEAL context (one that holds a secret key can decrypt), as a private
key (OpenSSH or PEM, as `cryptography` loads them) and, where its size fits 32 bytes raw or in
base64, as an X25519 private key. File names and extensions are ignored on purpose: a secret
copied under another name is still found.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tenseal as ts
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from nacl.public import PrivateKey

MAX_BYTES = 64 * 1024 * 1024  # nothing a federation keeps as a key is larger
Kind = Literal["tenseal-secret-context", "private-key", "nacl-private-key"]


@dataclass(frozen=True)
class Finding:
    path: Path
    kind: Kind
    public: str  # what the secret unlocks: a key id, an OpenSSH public key line, a base64 X25519 public key


def files(root: Path) -> Iterator[Path]:
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_BYTES:
            yield path


def tenseal_contexts(root: Path) -> list[tuple[Path, ts.Context]]:
    """Every file under `root` that loads as a TenSEAL context, with or without a secret key."""
    found = []
    for path in files(root):
        try:
            found.append((path, ts.context_from(path.read_bytes())))
        except Exception:  # TenSEAL raises plain ValueError/RuntimeError from C++ on anything else
            continue
    return found


def _private_key_public_line(data: bytes) -> str | None:
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            key = load(data, None)
        except TypeError:  # encrypted with a passphrase: still a private key
            return "(encrypted private key)"
        except (ValueError, IndexError, UnsupportedAlgorithm):
            continue
        public = key.public_key()
        try:
            return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        except ValueError:  # a key type OpenSSH cannot express (RSA/EC can; keep going for others)
            return public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
    return None


def _x25519_candidates(data: bytes) -> list[bytes]:
    candidates = [data] if len(data) == 32 else []
    if len(data) <= 64:
        try:
            decoded = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == 32:
            candidates.append(decoded)
    return candidates


def scan_for_secrets(root: Path, *, sealing_public_keys: Iterable[str] | None = None) -> list[Finding]:
    """Every secret under `root`. 32-byte values count as X25519 private keys when their public half is one
    of `sealing_public_keys` (base64), or, when no keys are given, always (any 32 bytes are a valid key)."""
    known = None if sealing_public_keys is None else set(sealing_public_keys)
    findings = []
    for path, ctx in tenseal_contexts(root):
        if ctx.is_private():
            findings.append(Finding(path, "tenseal-secret-context", _key_id(ctx)))
    for path in files(root):
        data = path.read_bytes()
        public_line = _private_key_public_line(data)
        if public_line is not None:
            findings.append(Finding(path, "private-key", public_line))
        for raw in _x25519_candidates(data):
            public = base64.b64encode(bytes(PrivateKey(raw).public_key)).decode()
            if known is None or public in known:
                findings.append(Finding(path, "nacl-private-key", public))
    return findings


def _key_id(ctx: ts.Context) -> str:
    from common.he.keys import key_id

    return key_id(ctx)
