"""The federation's CKKS key set: making it, its files, and loading each side's context.

The hospitals' secret context is made by a hospital (`fedcare he keygen`) and stays at hospitals;
the server's context carries the parameters only. The loaders enforce that split: the hospital's
loader refuses a context without a secret key, the server's loaders refuse one with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts

from common.atomic import write_bytes_atomic, write_json_atomic
from common.he.params import HEParams, build_context, context_facts, params_from_dict, validate_params
from common.he.wire import FORMAT
from common.private_files import write_private

log = logging.getLogger(__name__)

HOSPITAL_CONTEXT_FILE = "he-secret.ctx"
SERVER_CONTEXT_FILE = "he-public.ctx"
PARAMS_FILE = "he-params.json"


class HEKeyError(ValueError):
    """A key file in the wrong place: a secret key where only the public context belongs, or none."""


def make_keys(params: HEParams | None = None) -> tuple[bytes, bytes]:
    """(hospitals' secret context, server's context) as TenSEAL bytes.

    The server's context carries the parameters only: deserializing and adding ciphertexts needs no
    key, and a key the server does not have cannot leak from it. No Galois keys are made (no
    rotations), and the relinearisation keys TenSEAL makes by default are not saved (no products).
    """
    ctx = build_context(params or HEParams())
    secret = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    server = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return secret, server


def key_id(context: ts.Context) -> str:
    """A public name for the hospitals' key set, so a hospital with another key is caught by name.

    It hashes the secret-key serialization under a domain tag: one-way, and the key has thousands of
    bits of entropy, so the name reveals nothing about the key.
    """
    if not context.has_secret_key():
        raise HEKeyError("a key id is derived from the hospitals' secret context; this context has no secret key")
    material = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(b"fedcare-he-key-id/1\0" + material).hexdigest()[:32]


@dataclass(frozen=True)
class KeyFiles:
    """The key set's files: the one place that knows the layout `write_keys` makes."""

    hospital_context: Path
    hospital_params: Path
    server_context: Path
    server_params: Path
    key_id: str

    @classmethod
    def at(cls, out_dir: Path, *, key_id: str = "") -> KeyFiles:
        """Where `write_keys(out_dir)` puts each file: hospital/ for the hospitals, server/ for the server."""
        out_dir = Path(out_dir)
        return cls(
            hospital_context=out_dir / "hospital" / HOSPITAL_CONTEXT_FILE,
            hospital_params=out_dir / "hospital" / PARAMS_FILE,
            server_context=out_dir / "server" / SERVER_CONTEXT_FILE,
            server_params=out_dir / "server" / PARAMS_FILE,
            key_id=key_id,
        )


def existing_keys(out_dir: Path) -> KeyFiles | None:
    """The key files `write_keys(out_dir)` made earlier, with their key id; None if there are none."""
    files = KeyFiles.at(out_dir)
    if not (files.hospital_context.exists() and files.server_params.exists()):
        return None
    return KeyFiles.at(out_dir, key_id=str(json.loads(files.server_params.read_text())["key_id"]))


def write_keys(out_dir: Path, params: HEParams | None = None, *, overwrite: bool = False) -> KeyFiles:
    """Write the federation's HE material: `hospital/` goes to every hospital, `server/` to the server only.

    Existing files are kept unless `overwrite`: new keys make every earlier encrypted model unreadable.
    """
    params = validate_params(params or HEParams())
    out_dir = Path(out_dir)
    files = KeyFiles.at(out_dir)
    existing = [p for p in (files.hospital_context, files.server_context) if p.exists()]
    if existing and not overwrite:
        raise HEKeyError(
            f"{', '.join(map(str, existing))} already exist; new keys would make models encrypted "
            "under the old ones unreadable (`fedcare he keygen --force` replaces them)"
        )
    secret, server = make_keys(params)
    kid = key_id(ts.context_from(secret))
    (out_dir / "hospital").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out_dir / "hospital", 0o700)
    write_private(files.hospital_context, secret)  # the federation's secret key: 0600 from the first byte
    write_bytes_atomic(files.server_context, server)
    os.chmod(files.server_context, 0o644)
    meta = {"format": FORMAT, "params": params.to_dict(), "key_id": kid}
    write_json_atomic(files.hospital_params, meta)
    write_json_atomic(files.server_params, {**meta, "server_context_sha256": hashlib.sha256(server).hexdigest()})
    for public in (files.hospital_params, files.server_params):
        os.chmod(public, 0o644)
    return KeyFiles.at(out_dir, key_id=kid)


def load_secret_context(path: Path) -> ts.Context:
    """The hospitals' context, with its secret key; refuses a file that holds none."""
    path = Path(path)
    ctx = _read_context(path)
    if not ctx.has_secret_key():
        raise HEKeyError(
            f"{path} holds no secret key: hospitals need hospital/{HOSPITAL_CONTEXT_FILE} "
            "from `fedcare he keygen`, not the server's context"
        )
    if path.stat().st_mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %o); it holds the federation's secret key: chmod 600 it",
            path,
            path.stat().st_mode & 0o777,
        )
    return ctx


def load_hospital_context(data: bytes) -> ts.Context:
    """A hospital's context from bytes (a freshly unsealed key set); it must hold the secret key."""
    ctx = _context_from_bytes(data, what="hospital HE context")
    if not ctx.has_secret_key():
        raise HEKeyError(
            "the hospital HE context holds no secret key: hospitals need the key set's "
            f"{HOSPITAL_CONTEXT_FILE}, not the server's context"
        )
    return ctx


@dataclass(frozen=True)
class ServerHEContext:
    """What the server loads: the params-only context bytes and the public facts about the keys."""

    context_bytes: bytes
    params: HEParams
    key_id: str


def load_server_context(path: Path) -> ServerHEContext:
    """The server's context and, from he-params.json beside it, the parameters and key id.

    Refuses a context holding a secret key: with it the server could read every hospital's update.
    """
    path = Path(path)
    ctx = _read_context(path)
    if ctx.has_secret_key():
        raise HEKeyError(
            f"{path} holds the federation's SECRET key; the server must only get the public context "
            f"(server/{SERVER_CONTEXT_FILE} from `fedcare he keygen`). Remove this file from the server and "
            "consider the key exposed"
        )
    meta_path = path.parent / PARAMS_FILE
    try:
        meta = json.loads(meta_path.read_text())
        params, kid = params_from_dict(meta["params"]), str(meta["key_id"])
    except FileNotFoundError as exc:
        raise HEKeyError(f"{meta_path} is missing: `fedcare he keygen` writes it next to {path.name}") from exc
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise HEKeyError(f"{meta_path} is not a fedcare HE parameter file ({exc})") from exc
    facts = context_facts(ctx)
    if (facts["degree"], facts["scale_bits"]) != (params.poly_modulus_degree, params.global_scale_bits):
        raise HEKeyError(
            f"{path} (degree {facts['degree']}, scale 2**{facts['scale_bits']:g}) does not match "
            f"{meta_path} ({params.to_dict()})"
        )
    return ServerHEContext(context_bytes=path.read_bytes(), params=params, key_id=kid)


def load_public_context(data: bytes) -> ts.Context:
    """The server's context from bytes; refuses one with a secret key, which would let the server decrypt."""
    ctx = _context_from_bytes(data, what="server HE context")
    if ctx.has_secret_key():
        raise HEKeyError(
            "the server's HE context holds a secret key; the server must only get the public "
            f"context (server/{SERVER_CONTEXT_FILE} from `fedcare he keygen`)"
        )
    return ctx


def _context_from_bytes(data: bytes, *, what: str) -> ts.Context:
    try:
        return ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++
        raise HEKeyError(f"{what} is not a TenSEAL context ({len(data)} bytes): {exc}") from exc


def _read_context(path: Path) -> ts.Context:
    try:
        return ts.context_from(path.read_bytes())
    except FileNotFoundError as exc:
        raise HEKeyError(f"{path}: HE context file not found (make one with `fedcare he keygen --out DIR`)") from exc
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++
        raise HEKeyError(f"{path} is not a TenSEAL context ({exc})") from exc
