"""A hospital's key for receiving sealed secrets (X25519, PyNaCl sealed boxes).

The coordinator relays secrets it must not read: the budget token it issues to
a hospital, and the CKKS secret context one hospital makes for all the others.
Each is sealed to the receiving hospital's public sealing key, so only the
holder of `sealing.key` (made at the hospital, never sent anywhere) can open
it. A sealed box is anonymous: it says nothing about who sealed it, so what is
inside must be checked on its own terms (a key id, a fingerprint).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from common.private_files import write_private

SEALING_KEY_FILE = "sealing.key"  # base64 of the 32-byte X25519 private key, 0600
SEALING_PUBLIC_KEY_FILE = "sealing.pub"  # base64 of the 32-byte public key
KEY_BYTES = 32


class SealingError(ValueError):
    """A sealing key or sealed blob that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SealingKeys:
    private_key: Path
    public_key: Path
    public_b64: str

    @property
    def fingerprint(self) -> str:
        return sealing_fingerprint(self.public_b64)


def sealing_fingerprint(public_b64: str) -> str:
    """`SHA256:...` of the raw public key: short enough to read out over the phone."""
    raw = decode_public_key(public_b64, where="sealing public key")
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def decode_public_key(public_b64: str, *, where: str) -> bytes:
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SealingError(f"{where}: not base64 ({exc})") from None
    if len(raw) != KEY_BYTES:
        raise SealingError(f"{where}: an X25519 public key is {KEY_BYTES} bytes, this one is {len(raw)}")
    return raw


def make_sealing_keys(out_dir: Path) -> SealingKeys:
    """Write `sealing.key` (0600) and `sealing.pub` in `out_dir`, replacing any earlier pair."""
    key = PrivateKey.generate()
    public_b64 = base64.b64encode(bytes(key.public_key)).decode()
    keys = SealingKeys(out_dir / SEALING_KEY_FILE, out_dir / SEALING_PUBLIC_KEY_FILE, public_b64)
    write_private(keys.private_key, base64.b64encode(bytes(key)).decode() + "\n")
    keys.public_key.write_text(public_b64 + "\n")
    keys.public_key.chmod(0o644)
    return keys


def read_public_key(path: Path) -> str:
    text = Path(path).read_text().strip()
    decode_public_key(text, where=str(path))
    return text


def load_private_key(path: Path) -> PrivateKey:
    try:
        raw = base64.b64decode(Path(path).read_text().strip(), validate=True)
    except FileNotFoundError:
        raise SealingError(
            f"{path} is missing: this site has no sealing key (`fedcare institution join` makes it)"
        ) from None
    except (binascii.Error, ValueError) as exc:
        raise SealingError(f"{path} is not a base64 sealing key ({exc})") from None
    if len(raw) != KEY_BYTES:
        raise SealingError(f"{path}: an X25519 private key is {KEY_BYTES} bytes, this one is {len(raw)}")
    return PrivateKey(raw)


def seal(data: bytes, *, public_b64: str) -> bytes:
    """`data` sealed to one hospital: only the holder of the matching `sealing.key` can open it."""
    return SealedBox(PublicKey(decode_public_key(public_b64, where="recipient's sealing key"))).encrypt(data)


def unseal(blob: bytes, *, private_key: PrivateKey, what: str) -> bytes:
    try:
        return SealedBox(private_key).decrypt(blob)
    except CryptoError:
        raise SealingError(
            f"{what} does not open with this site's sealing key: it was sealed for another site or key "
            "(was the site re-joined after the request was sent?), or it was damaged on the way"
        ) from None
