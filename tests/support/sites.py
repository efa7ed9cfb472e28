"""Hospitals that joined with their own keys and were registered by request, for tests."""

from __future__ import annotations

from pathlib import Path

from fedcare.federation_dir import FederationDir, slugify
from fedcare.kits import KitOptions
from fedcare.registration import BudgetTarget, register_institution
from fedcare.site import SiteDir, install_kit, join_site
from fedcare.superlink_control import SuperLinkConnection


def join_and_register(
    fed: FederationDir,
    sites_root: Path,
    names: list[str],
    *,
    superlink: SuperLinkConnection | None = None,
    budget: BudgetTarget | None = None,
    epsilon_limit: float = 10.0,
) -> dict[str, SiteDir]:
    """Each hospital joins in its own site directory, the coordinator registers its request, the hospital
    installs the kit: the whole exchange, with only public or sealed files crossing."""
    sites = {}
    for name in names:
        site, request = join_site(sites_root / slugify(name), name)
        report = register_institution(
            fed, KitOptions(name, epsilon_limit, 1e-5), request=request, superlink=superlink, budget=budget
        )
        install_kit(report.kit, site.root)
        sites[name] = site
    return sites
