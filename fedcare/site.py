"""A hospital's site directory: where its own keys are made and its kit is installed.

```
node.key, node.pub          the SuperNode's key pair, made here (`join`); node.key never leaves (0600)
sealing.key, sealing.pub    X25519 key for secrets sealed to this site (budget token, CKKS secret); 0600
registration-request.json   the public halves, for the coordinator (`fedcare institution register --request`)
ca.crt, kit.json, README.md from the kit the coordinator answered with (`install`)
node-config.toml            the SuperNode's --node-config, paths pointing into this directory
budget-token                unsealed from the kit's budget-token.sealed (0600)
he-secret.ctx, he-params.json   the federation's CKKS secret context, unsealed here (0600), when HE is on
```
After `install` the directory has the same files, under the same names, as a one-step kit, so
whatever starts a SuperNode from a kit starts it from a site directory unchanged.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from common.private_files import make_private_dir, write_private
from fedcare.federation_dir import FederationConfig, slugify
from fedcare.json_files import read_json_object
from fedcare.kits import (
    CA_FILE,
    HE_CONTEXT_FILE,
    HE_PARAMS_FILE,
    KIT_FILE,
    NODE_CONFIG_FILE,
    NODE_HE_CONTEXT_KEY,
    README_FILE,
    SEALED_HE_SECRET_FILE,
    SEALED_TOKEN_FILE,
    TOKEN_FILE,
    readme,
)
from fedcare.node_keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, make_node_keys, read_fingerprint
from fedcare.registration_request import REQUEST_FILE, RegistrationRequest, read_request
from fedcare.registry import now
from fedcare.sealing import SEALING_KEY_FILE, SEALING_PUBLIC_KEY_FILE, load_private_key, make_sealing_keys, unseal


class SiteError(RuntimeError):
    """A site directory or kit the hospital must fix before going on; the message says how."""


@dataclass(frozen=True)
class SiteDir:
    root: Path

    @property
    def node_key(self) -> Path:
        return self.root / PRIVATE_KEY_FILE

    @property
    def node_public_key(self) -> Path:
        return self.root / PUBLIC_KEY_FILE

    @property
    def sealing_key(self) -> Path:
        return self.root / SEALING_KEY_FILE

    @property
    def sealing_public_key(self) -> Path:
        return self.root / SEALING_PUBLIC_KEY_FILE

    @property
    def request(self) -> Path:
        return self.root / REQUEST_FILE

    @property
    def node_config(self) -> Path:
        return self.root / NODE_CONFIG_FILE

    @property
    def he_secret_context(self) -> Path:
        return self.root / HE_CONTEXT_FILE

    @property
    def he_params(self) -> Path:
        return self.root / HE_PARAMS_FILE

    def joined_request(self) -> RegistrationRequest:
        """This site's own registration request; SiteError if the directory was never joined."""
        missing = [p.name for p in (self.node_key, self.sealing_key, self.request) if not p.exists()]
        if missing:
            raise SiteError(
                f"{self.root} is not a joined site ({', '.join(missing)} missing): "
                "run `fedcare institution join NAME --out SITE_DIR` first"
            )
        return read_request(self.request)

    def set_node_config(self, key: str, value: str) -> None:
        """One entry of node-config.toml (made if missing by `install`)."""
        config = tomllib.loads(self.node_config.read_text()) if self.node_config.exists() else {}
        config[key] = value
        self.node_config.write_text(tomli_w.dumps(config))


@dataclass
class SiteReport:
    site: Path
    done: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def join_site(root: Path, name: str, *, force: bool = False) -> tuple[SiteDir, RegistrationRequest]:
    """Make this hospital's node key pair and sealing key pair in `root`, and the registration request.

    An existing site is refused unless `force`: new keys make any kit issued for the old ones useless.
    """
    site = SiteDir(Path(root).resolve())
    slug = slugify(name)
    if site.node_key.exists() and not force:
        raise SiteError(
            f"{site.root} already holds a node key; pass --force to make new keys (kits issued for the old "
            "ones stop matching: send the new request and ask the coordinator to register it with --rotate)"
        )
    make_private_dir(site.root)
    node = make_node_keys(site.root, comment=f"fedcare-{slug}")
    sealing = make_sealing_keys(site.root)
    request = RegistrationRequest.new(
        institution=name,
        node_public_key=node.public_key.read_text(),
        sealing_public_key=sealing.public_b64,
    )
    request.write(site.request)
    return site, request


def install_kit(kit: Path, root: Path, *, data_path: str | None = None) -> SiteReport:
    """Install the coordinator's kit into the site: public files, the unsealed budget token, the node config.

    Refuses a kit made for another node key, and a kit that carries a private key (a one-step kit is
    complete as it is; its keys were made by the coordinator).
    """
    kit, site = Path(kit).resolve(), SiteDir(Path(root).resolve())
    request = site.joined_request()
    info = _read_kit_info(kit)
    if (kit / PRIVATE_KEY_FILE).exists() or info.get("keys-made-by") == "coordinator":
        raise SiteError(
            f"{kit} was made with coordinator-made keys (one-step registration): it is complete as it is and "
            "is not installed into a site; send your registration request instead"
        )
    own = read_fingerprint(site.node_public_key)
    if info.get("node-key-fingerprint") != own or read_fingerprint(kit / PUBLIC_KEY_FILE) != own:
        raise SiteError(
            f"{kit} was made for node key {info.get('node-key-fingerprint')}, but this site's key "
            f"({site.node_public_key}) is {own}: this kit belongs to another site or to keys made before "
            "a re-join; ask the coordinator to register this site's registration-request.json"
        )
    if info.get("institution") != request.institution:
        raise SiteError(f"{kit} is for {info.get('institution')!r}, this site joined as {request.institution!r}")
    report = SiteReport(site.root)
    (site.root / CA_FILE).write_bytes((kit / CA_FILE).read_bytes())
    root_there = str(info.get("kit-root") or kit)
    _install_node_config(kit, site, root_there=root_there, data_path=data_path)
    report.done.append(f"node config {site.node_config} (paths in {site.root})")
    info["node-config"] = _rebase(str(info.get("node-config", "")), root_there, str(site.root))
    info.update({"site": str(site.root), "installed-at": now(), "kit-root": str(site.root)})
    (site.root / KIT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    config = FederationConfig(
        fleet_address=str(info.get("fleet-address", "")),
        budget_url=str(info.get("budget-url", "")),
        he=bool(info["he"]),
    )
    (site.root / README_FILE).write_text(
        readme(request.institution, slug=kit.name, root=str(site.root), config=config, node_config=None)
    )
    private = load_private_key(site.sealing_key)
    if (kit / SEALED_TOKEN_FILE).exists():
        token = unseal((kit / SEALED_TOKEN_FILE).read_bytes(), private_key=private, what=str(kit / SEALED_TOKEN_FILE))
        write_private(site.root / TOKEN_FILE, token)
        report.done.append(f"budget token unsealed into {site.root / TOKEN_FILE} (0600)")
    elif info.get("budget-url"):
        report.notes.append("no budget token in the kit yet (pending at the coordinator): install its next kit")
    if (kit / SEALED_HE_SECRET_FILE).exists():
        from fedcare.he_ceremony import install_sealed_secret  # TenSEAL only where HE is used

        key_id = install_sealed_secret(site, sealed=kit / SEALED_HE_SECRET_FILE, params=kit / HE_PARAMS_FILE)
        report.done.append(f"CKKS secret context (key set {key_id}) unsealed into {site.he_secret_context} (0600)")
    return report


def _read_kit_info(kit: Path) -> dict:
    info = read_json_object(kit / KIT_FILE, error=SiteError, missing=f"{kit} is not a kit: it has no {KIT_FILE}")
    for name in ("institution", "node-key-fingerprint", "he"):
        if name not in info:
            raise SiteError(f"{kit / KIT_FILE}: field {name!r} is missing")
    for name in (CA_FILE, PUBLIC_KEY_FILE, NODE_CONFIG_FILE):
        if not (kit / name).exists():
            raise SiteError(f"{kit} is incomplete: {name} is missing")
    return info


def _install_node_config(kit: Path, site: SiteDir, *, root_there: str, data_path: str | None) -> None:
    text = (kit / NODE_CONFIG_FILE).read_text()
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{kit / NODE_CONFIG_FILE} is not TOML ({exc})") from None
    config = {k: _rebase(v, root_there, str(site.root)) if isinstance(v, str) else v for k, v in config.items()}
    if not config:  # the coordinator gave a whole --node-config string: keep its note as it is
        site.node_config.write_text(text)
        return
    if data_path is not None:
        config["data-path"] = data_path
    if site.he_secret_context.exists():  # a re-installed kit keeps the CKKS secret already unsealed here
        config[NODE_HE_CONTEXT_KEY] = str(site.he_secret_context)
    site.node_config.write_text(tomli_w.dumps(config))


def _rebase(value: str, old_root: str, new_root: str) -> str:
    """A path under the kit's root (as the coordinator wrote it) moved under the site's root."""
    old_root = old_root.rstrip("/")
    if value == old_root or value.startswith(old_root + "/"):
        return new_root + value[len(old_root) :]
    return value
