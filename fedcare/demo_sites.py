"""The demo's sites on disk, set up the way a deployment's are: one folder per site.

```
OUT/coordinator/          the federation directory: CA, SuperLink TLS, registry, the kits it issued,
                          the relayed key-free CKKS context (he/server/), the budget service's folder
                          and ledger (budget/), run results (runs/), one log per process (logs/)
OUT/hospitals/<slug>/     a hospital's site directory: its own node and sealing keys, its budget token
                          and CKKS secret context (both unsealed here), its accountant (state/), data.csv
                          (or images/, the image task's class folders)
```
One operator plays every part here, in the order of a deployment: each hospital joins (makes its
keys), the coordinator registers its request and issues a kit, the hospital installs it; in HE mode
one hospital makes the key set, the coordinator relays the sealed copies, the others install them.
Only public or sealed files cross from one folder to the other, so the coordinator's folder ends up
holding no hospital's secret. A rerun on the same folders reuses keys, registrations and key set
(accountants continue, old models stay readable).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedcare.federation_dir import FederationDir, ensure_local_federation, slugify
from fedcare.kits import KitOptions
from fedcare.registration import BudgetTarget, register_institution, sync
from fedcare.registry import Registry
from fedcare.site import SiteDir, install_kit, join_site
from fedcare.superlink_control import SuperLinkConnection

COORDINATOR_DIR, HOSPITALS_DIR, DATA_FILE = "coordinator", "hospitals", "data.csv"  # data.csv: the kit's default
DATA_DIR = "images"  # a site's data when it is a folder (the image task's class folders)
BUNDLE_DIR = "bundle"  # under the coordinator's he/: the key-set bundle the key-making hospital sent


@dataclass(frozen=True)
class DemoSites:
    federation: FederationDir
    hospitals: dict[str, SiteDir]  # institution name -> its site directory
    key_id: str | None = None  # the CKKS key set every hospital holds, in HE mode

    @property
    def he_public_context(self) -> Path:
        """The key-free context the ServerApp adds under (relayed by the coordinator)."""
        from fedcare.he_relay import server_key_files  # TenSEAL only in HE mode

        return server_key_files(self.federation).server_context

    @property
    def he_secret_context(self) -> Path | None:
        """The first hospital's (the key maker's) secret context, to read an HE run's model as a hospital would."""
        return next(iter(self.hospitals.values())).he_secret_context if self.key_id is not None else None


def coordinator_dir(out: Path) -> FederationDir:
    """The demo's federation directory, made on first use (its budget/admin-token is the ledger's admin token)."""
    return ensure_local_federation(Path(out) / COORDINATOR_DIR)


def set_up_sites(
    fed: FederationDir,
    hospitals_root: Path,
    data: dict[str, Path],
    *,
    epsilon_limit: float,
    delta: float,
    budget: BudgetTarget | None,
    he: bool,
) -> DemoSites:
    """Enrol every hospital of `data` (name -> its data file, moved into its site) and, in HE mode, have the
    first one make the key set. SuperLink registrations stay pending until the SuperLink starts (its sync)."""
    sites = {
        name: enrol_site(
            fed,
            hospitals_root / slugify(name),
            name,
            options=KitOptions(name, epsilon_limit, delta),
            superlink=None,
            budget=budget,
            data=path,
        )
        for name, path in data.items()
    }
    key_id = hospital_key_ceremony(fed, sites, maker=next(iter(sites))) if he else None
    return DemoSites(fed, sites, key_id)


def enrol_site(
    fed: FederationDir,
    root: Path,
    name: str,
    *,
    options: KitOptions,
    superlink: SuperLinkConnection | None,
    budget: BudgetTarget | None,
    data: Path | None = None,
) -> SiteDir:
    """Join (unless `root` already holds this hospital's keys), have the coordinator register the request
    (unless the registry has it under these keys) and install the kit; `data` is moved into the site."""
    site = SiteDir(Path(root).resolve())
    if site.node_key.exists() and site.request.exists():
        request = site.joined_request()
    else:
        site, request = join_site(site.root, name)
    data_path = None
    if data is not None and Path(data).is_dir():
        target = site.root / DATA_DIR
        if target.exists():  # a rerun: this split replaces the earlier one
            shutil.rmtree(target)
        Path(data).replace(target)
        data_path = str(target)
    elif data is not None:
        Path(data).replace(site.root / DATA_FILE)
    record = Registry(fed.registry_path).snapshot().get(fed.kit_dir(name).name)
    if record is None or not record.active or record.fingerprint != request.node_key_fingerprint:
        register_institution(
            fed, options, request=request, rotate=record is not None, superlink=superlink, budget=budget
        )
    elif record.pending:
        sync(fed, superlink=superlink, budget=budget, only={record.slug})
    install_kit(fed.kit_dir(name), site.root, data_path=data_path)
    return site


def join_and_register(
    fed: FederationDir,
    sites_root: Path,
    names: list[str],
    *,
    superlink: SuperLinkConnection | None = None,
    budget: BudgetTarget | None = None,
    epsilon_limit: float = 10.0,
) -> dict[str, SiteDir]:
    """Each hospital joins in its own site directory under `sites_root`, the coordinator registers its
    request, the hospital installs the kit: the whole exchange, with only public or sealed files crossing."""
    return {
        name: enrol_site(
            fed,
            sites_root / slugify(name),
            name,
            options=KitOptions(name, epsilon_limit, 1e-5),
            superlink=superlink,
            budget=budget,
        )
        for name in names
    }


def hospital_key_ceremony(fed: FederationDir, sites: dict[str, SiteDir], *, maker: str) -> str:
    """Coordinator: roster. `maker`: the key set. Coordinator: relay. Every other hospital: install its blob.

    The relayed key set is kept while it still fits the federation and every site holds it; returns its id.
    """
    from fedcare.he_ceremony import make_key_set  # TenSEAL only in HE mode
    from fedcare.he_relay import key_set_problem, relay_key_set, server_key_files
    from fedcare.roster import write_roster

    params = server_key_files(fed).server_params
    if params.exists() and key_set_problem(fed) is None:
        key_id = str(json.loads(params.read_text())["key_id"])
        if all(_site_key_id(site) == key_id for site in sites.values()):
            return key_id
    _, roster = write_roster(fed)
    made = make_key_set(sites[maker], roster, bundle=fed.he_dir / BUNDLE_DIR)
    relay_key_set(fed, made.directory)
    for name, site in sites.items():
        if name != maker:  # the re-installed kit keeps the data path the site had (an image task's folder)
            install_kit(fed.kit_dir(name), site.root, data_path=_data_path(site))
    return made.key_id


def _data_path(site: SiteDir) -> str | None:
    if not site.node_config.exists():
        return None
    return tomllib.loads(site.node_config.read_text()).get("data-path")


def _site_key_id(site: SiteDir) -> str | None:
    if not (site.he_secret_context.exists() and site.he_params.exists()):
        return None
    return str(json.loads(site.he_params.read_text()).get("key_id"))
