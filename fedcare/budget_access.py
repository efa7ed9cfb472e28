"""How a terminal reaches the budget service: from a hospital's site directory, or from options.

A site directory (a one-step kit, or a site after `fedcare institution install`) already holds
all of it: the service's URL in `kit.json`, the federation CA in `ca.crt`, and the institution's
token in `budget-token` (0600). The token is read from that file only, so it never appears on a
command line, in a URL or in a log. Failures become one line that says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.private_files import is_private
from fedcare.json_files import read_json_object
from fedcare.kits import CA_FILE, KIT_FILE, TOKEN_FILE
from server.budget_client.connection import (
    BudgetAuthError,
    BudgetServiceError,
    BudgetServiceUnavailable,
    BudgetTlsError,
)


class BudgetAccessError(RuntimeError):
    """The site directory or the options do not say how to reach the budget service; the message says how."""


@dataclass(frozen=True)
class BudgetAccess:
    url: str
    token: str
    ca_certificate: Path | None  # None: the system's CAs (a service behind a public certificate)
    whose: str  # for messages: "St Mary's site (SITE/budget-token)" or "--token-file FILE"
    site: Path | None = None


def read_token_file(path: Path) -> str:
    """The one token in `path`; refused when other users may read it (it is a secret, 0600)."""
    try:
        if not is_private(path):
            raise BudgetAccessError(f"{path} may be read by other users; run `chmod 600 {path}`")
        token = path.read_text().strip()
    except FileNotFoundError:
        raise BudgetAccessError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BudgetAccessError(f"cannot read the token in {path}: {exc}") from None
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise BudgetAccessError(f"{path} does not hold one token (one line, no spaces)")
    return token


def access_from_site(site: Path, *, url: str | None = None) -> BudgetAccess:
    """URL, CA and token from a site directory; `url` overrides kit.json's (another route to the same service)."""
    site = Path(site).resolve()
    info = read_json_object(
        site / KIT_FILE,
        error=BudgetAccessError,
        missing=f"{site} is not a site directory or kit (no {KIT_FILE}): pass the folder `fedcare institution "
        "install --site` wrote, or the kit the coordinator sent",
    )
    url = url or str(info.get("budget-url") or "")
    if not url:
        raise BudgetAccessError(
            f"{site / KIT_FILE} names no budget service (budget-url is empty): this federation has none, or pass --url"
        )
    ca = site / CA_FILE
    if not ca.is_file():
        raise BudgetAccessError(f"{ca} is missing: reinstall the kit (`fedcare institution install`)")
    token_file = site / TOKEN_FILE
    if not token_file.exists():
        raise BudgetAccessError(
            f"{token_file} is missing: the coordinator has not registered this institution with the budget service "
            "yet; install the kit it sends after `fedcare federation sync`"
        )
    name = info.get("institution") or site.name
    return BudgetAccess(url, read_token_file(token_file), ca, f"{name}'s site ({token_file})", site)


def access_from_options(
    *, url: str, token_file: Path | None, token: str | None, ca_certificate: Path | None
) -> BudgetAccess:
    """For the coordinator's operators: a token file (preferred), else $FEDCARE_BUDGET_TOKEN or --token, else
    $FEDCARE_ADMIN_TOKEN."""
    if token_file is not None:
        return BudgetAccess(url, read_token_file(token_file), ca_certificate, f"the token in {token_file}")
    token = token or os.environ.get("FEDCARE_ADMIN_TOKEN")
    if not token:
        raise BudgetAccessError(
            "no token: pass --kit SITE_DIR (a hospital) or --token-file FILE, or set FEDCARE_BUDGET_TOKEN "
            "(or FEDCARE_ADMIN_TOKEN)"
        )
    return BudgetAccess(url, token, ca_certificate, "this token")


def explain(exc: BudgetServiceError, access: BudgetAccess) -> str:
    """One line a person can act on, for a refusal or a failure to connect."""
    if isinstance(exc, BudgetTlsError):
        return str(exc)
    if isinstance(exc, BudgetAuthError) and exc.status_code == 401:
        fix = (
            "it was rotated or revoked: install the newest kit from the coordinator (`fedcare institution install`)"
            if access.site is not None
            else "check the token, or ask the coordinator for a new one"
        )
        return f"the budget service did not accept {access.whose} (401 {exc.detail}); {fix}"
    if isinstance(exc, BudgetAuthError):
        return f"refused (403): {exc.detail}"
    if isinstance(exc, BudgetServiceUnavailable):
        return (
            f"cannot reach the budget service at {access.url} ({exc.detail}): check that it runs and that this host "
            "may reach its port (firewall), or pass --url with the address that works from here"
        )
    return f"the budget service refused ({exc.status_code}): {exc.detail}" if exc.status_code else str(exc)
