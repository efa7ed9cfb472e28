"""The CKKS key ceremony, at the hospitals: one makes the key set, every one unseals its copy.

The hospital that makes the key set (`fedcare he keygen --site SITE --roster roster.json --bundle OUT`)
keeps the secret context in its site directory and writes a bundle for the coordinator that holds
nothing secret:

```
OUT/he-public.ctx         the key-free context for the ServerApp (parameters only)
OUT/he-params.json        parameters, key id, the roster id and recipients it was made for
OUT/sealed/<slug>.sealed  the secret context sealed to each roster entry's sealing key
```
The coordinator relays the bundle (`fedcare he relay`, `fedcare.he_relay`); each hospital unseals
its blob into its site (`install_sealed_secret`), checking that the secret is the key set the
parameters name. The key id is public and short: hospitals compare it with the key-making hospital
over a channel of their own, which is what shows that the sealed secret came from that hospital
and not from someone who only knows the public sealing keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from common.he.keys import PARAMS_FILE, SERVER_CONTEXT_FILE, HEKeyError, key_id, load_hospital_context, make_keys
from common.he.params import HEParams, context_facts, params_from_dict, validate_params
from common.he.wire import FORMAT
from common.private_files import make_private_dir, write_private
from fedcare.json_files import read_json_object
from fedcare.kits import NODE_HE_CONTEXT_KEY
from fedcare.roster import Roster
from fedcare.sealing import load_private_key, seal, unseal
from fedcare.site import SiteDir

SEALED_DIR = "sealed"
RETIRED_DIR = "he-retired"  # earlier key sets, kept to decrypt models encrypted under them


class CeremonyError(ValueError):
    """A key set that cannot be made or installed as asked; the message says what to do."""


@dataclass(frozen=True)
class KeySetBundle:
    directory: Path
    key_id: str
    roster_id: str
    recipients: tuple[str, ...]

    @property
    def public_context(self) -> Path:
        return self.directory / SERVER_CONTEXT_FILE

    @property
    def params(self) -> Path:
        return self.directory / PARAMS_FILE

    def sealed_for(self, slug: str) -> Path:
        return self.directory / SEALED_DIR / f"{slug}.sealed"


def make_key_set(site: SiteDir, roster: Roster, *, bundle: Path, params: HEParams | None = None) -> KeySetBundle:
    """Make a new CKKS key set at this site: keep the secret here, write the coordinator's bundle to `bundle`."""
    request = site.joined_request()
    own = roster.entry_for(request.institution)
    if own is None or own.sealing_public_key != request.sealing_public_key:
        raise CeremonyError(
            f"{request.institution!r} is not in the roster {roster.roster_id} with this site's sealing key: "
            "only a registered hospital makes the key set (ask the coordinator for the current roster)"
        )
    params = validate_params(params or HEParams())
    secret, server = make_keys(params)
    kid = key_id(load_hospital_context(secret))
    meta = {
        "format": FORMAT,
        "params": params.to_dict(),
        "key_id": kid,
        "server_context_sha256": hashlib.sha256(server).hexdigest(),
        "roster-id": roster.roster_id,
        "recipients": roster.slugs,
        "made-by": own.slug,
        "created-at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out = KeySetBundle(Path(bundle).resolve(), kid, roster.roster_id, tuple(roster.slugs))
    if out.directory == site.root or site.root in out.directory.parents:
        raise CeremonyError(f"write the bundle outside the site directory {site.root}: it goes to the coordinator")
    shutil.rmtree(out.directory / SEALED_DIR, ignore_errors=True)  # blobs of an earlier key set
    (out.directory / SEALED_DIR).mkdir(parents=True)
    for entry in roster.entries:
        out.sealed_for(entry.slug).write_bytes(seal(secret, public_b64=entry.sealing_public_key))
    out.public_context.write_bytes(server)
    write_json_atomic(out.params, meta)
    for path in (out.public_context, out.params):
        path.chmod(0o644)
    _install_secret(site, secret, meta, source="the new key set")
    return out


def install_sealed_secret(site: SiteDir, *, sealed: Path, params: Path) -> str:
    """Unseal this site's copy of the CKKS secret context into the site; returns its key id."""
    site.joined_request()
    meta = read_key_set_params(params)
    secret = unseal(Path(sealed).read_bytes(), private_key=load_private_key(site.sealing_key), what=str(sealed))
    return _install_secret(site, secret, meta, source=str(sealed))


def read_key_set_params(path: Path) -> dict[str, Any]:
    path = Path(path)
    meta = read_json_object(path, error=CeremonyError, missing=f"{path} is missing: it travels with the sealed secret")
    if meta.get("format") != FORMAT:
        raise CeremonyError(f"{path}: field 'format' is not {FORMAT!r}")
    for name in ("key_id", "params", "roster-id", "recipients"):
        if name not in meta:
            raise CeremonyError(f"{path}: field {name!r} is missing")
    return meta


def _install_secret(site: SiteDir, secret: bytes, meta: dict[str, Any], *, source: str) -> str:
    try:
        ctx = load_hospital_context(secret)
    except HEKeyError as exc:
        raise CeremonyError(f"{source}: {exc}") from None
    kid = key_id(ctx)
    if kid != meta["key_id"]:
        raise CeremonyError(
            f"{source} holds key set {kid}, but its he-params.json names key set {meta['key_id']}: "
            "they were not made together; ask for the current key set"
        )
    params, facts = params_from_dict(meta["params"]), context_facts(ctx)
    if (facts["degree"], facts["scale_bits"]) != (params.poly_modulus_degree, params.global_scale_bits):
        raise CeremonyError(f"{source}: the context's parameters differ from he-params.json ({params.to_dict()})")
    _retire_current(site, new_key_id=kid)
    write_private(site.he_secret_context, secret)
    write_json_atomic(site.he_params, meta)
    site.he_params.chmod(0o644)
    site.set_node_config(NODE_HE_CONTEXT_KEY, str(site.he_secret_context))
    return kid


def _retire_current(site: SiteDir, *, new_key_id: str) -> None:
    """Keep the key set being replaced (models encrypted under it stay readable here), out of the way."""
    if not site.he_secret_context.exists() or not site.he_params.exists():
        return
    old = str(json.loads(site.he_params.read_text()).get("key_id", "unknown"))
    if old == new_key_id:
        return
    retired = make_private_dir(site.root / RETIRED_DIR / old)
    write_private(retired / site.he_secret_context.name, site.he_secret_context.read_bytes())
    shutil.copyfile(site.he_params, retired / site.he_params.name)
