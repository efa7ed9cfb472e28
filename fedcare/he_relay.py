"""The coordinator's part of the CKKS key ceremony: relay what it cannot read.

`relay_key_set` takes the bundle a hospital made (`fedcare.he_ceremony`), checks that it holds
nothing secret the coordinator could use and that it was made for the current roster, then puts
the key-free context where the ServerApp's run config points (`DIR/he/server/`) and each sealed
blob into its institution's kit folder (`DIR/institutions/<slug>/he-secret.sealed`), from where
the hospital installs it. Kits of institutions no longer in the key set lose their old blob.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import write_bytes_atomic
from common.he.keys import PARAMS_FILE, KeyFiles, load_server_context
from fedcare.federation_dir import FederationDir
from fedcare.he_ceremony import KeySetBundle, read_key_set_params
from fedcare.kits import HE_PARAMS_FILE, SEALED_HE_SECRET_FILE
from fedcare.registry import Registry
from fedcare.roster import build_roster

SEALED_BOX_OVERHEAD = 48  # X25519 ephemeral public key + Poly1305 tag


class RelayError(ValueError):
    """A key-set bundle the coordinator will not relay; the message says what to do."""


@dataclass
class RelayReport:
    key_id: str
    server_context: Path
    delivered: dict[str, Path] = field(default_factory=dict)  # institution -> its sealed blob
    withdrawn: list[str] = field(default_factory=list)  # kits whose old blob was removed


def server_key_files(fed: FederationDir) -> KeyFiles:
    """Where the ServerApp's run config points: the key-free context and its parameters."""
    return KeyFiles.at(fed.he_dir)


def relay_key_set(fed: FederationDir, bundle_dir: Path) -> RelayReport:
    files = server_key_files(fed)
    if files.hospital_context.exists():
        raise RelayError(
            f"{files.hospital_context} is a CKKS secret the coordinator made (`federation init --he`, single-operator "
            "setups). Remove it, and treat that key as exposed, before relaying a key set a hospital made"
        )
    meta = read_key_set_params(Path(bundle_dir) / PARAMS_FILE)
    bundle = KeySetBundle(Path(bundle_dir), str(meta["key_id"]), str(meta["roster-id"]), tuple(meta["recipients"]))
    server = load_server_context(bundle.public_context)  # refuses a context that holds a secret key
    context_bytes = bundle.public_context.read_bytes()
    if hashlib.sha256(context_bytes).hexdigest() != meta.get("server_context_sha256"):
        raise RelayError(f"{bundle.public_context} is not the context {bundle.params} was written for")
    roster = build_roster(fed)
    if bundle.roster_id != roster.roster_id:
        raise RelayError(
            f"{bundle_dir} was made for roster {bundle.roster_id} ({', '.join(bundle.recipients)}); the "
            f"federation's roster is now {roster.roster_id} ({', '.join(roster.slugs) or 'nobody'}). Publish it "
            "(`fedcare he roster`) and ask a hospital to make a new key set for it"
        )
    blobs = {}
    for entry in roster.entries:
        blob = bundle.sealed_for(entry.slug)
        if not blob.exists():
            raise RelayError(f"{blob} is missing: the key set must reach every institution of the roster")
        data = blob.read_bytes()
        if len(data) <= SEALED_BOX_OVERHEAD:
            raise RelayError(f"{blob} is too short ({len(data)} bytes) to be a sealed CKKS context")
        blobs[entry] = data

    files.server_context.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(files.server_params, bundle.params.read_bytes())
    write_bytes_atomic(files.server_context, context_bytes)
    for path in (files.server_params, files.server_context):
        path.chmod(0o644)
    report = RelayReport(server.key_id, files.server_context)
    for entry, data in blobs.items():
        kit = fed.kit_dir(entry.institution)
        write_bytes_atomic(kit / SEALED_HE_SECRET_FILE, data)
        shutil.copyfile(bundle.params, kit / HE_PARAMS_FILE)
        report.delivered[entry.institution] = kit / SEALED_HE_SECRET_FILE
    for record in Registry(fed.registry_path).snapshot().values():
        kit = fed.kit_dir(record.name)
        if record.name not in report.delivered and (kit / SEALED_HE_SECRET_FILE).exists():
            for stale in (SEALED_HE_SECRET_FILE, HE_PARAMS_FILE):
                (kit / stale).unlink(missing_ok=True)
            report.withdrawn.append(record.name)
    return report


def key_set_problem(fed: FederationDir) -> str | None:
    """Why the relayed key set no longer fits the federation (a revoked holder, a newcomer), or None."""
    params = server_key_files(fed).server_params
    if not params.exists():
        return None
    meta = json.loads(params.read_text())
    holders, roster = set(meta.get("recipients", ())), build_roster(fed)
    gone = sorted(holders - set(roster.slugs))
    new = sorted(set(roster.slugs) - holders)
    if gone:
        return (
            f"key set {meta.get('key_id')} is held by {', '.join(gone)}, no longer in the federation: rotate it "
            "(`fedcare he roster`, a hospital runs `fedcare he keygen --site`, then `fedcare he relay`)"
        )
    if new:
        return f"{', '.join(new)} joined after key set {meta.get('key_id')} was made: make a new key set for them"
    if meta.get("roster-id") != roster.roster_id:
        return (
            f"a sealing key changed since key set {meta.get('key_id')} was made (a hospital re-joined): make a new "
            "key set for the current roster"
        )
    return None
