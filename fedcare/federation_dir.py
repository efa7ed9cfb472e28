"""A federation directory: everything the coordinating site keeps, made by `fedcare federation init`.

```
DIR/federation.toml          addresses (SuperLink control + Fleet API, budget service), SANs, HE on/off
DIR/ca/ca.key                the CA's private key (0600): issues the server certificates; keep it offline
DIR/superlink/ca.crt         the CA certificate (goes into every kit)
DIR/superlink/server.pem     the SuperLink's certificate, with the names and IPs hospitals dial
DIR/superlink/server.key     its private key (0600); never leaves this directory
DIR/he/hospital/, he/server/ CKKS material (with --he): hospital/ is copied into kits, server/ feeds the ServerApp
DIR/budget/admin-token       the budget service's admin token (0600)
DIR/budget/server.pem        the budget service's HTTPS certificate (same CA), for the names hospitals dial
DIR/budget/server.key        its private key (0600); only the budget service reads it
DIR/registry.json            registered institutions and what is still pending
DIR/institutions/<slug>/     one kit per hospital
```
Paths, not prompts: the deploy tooling runs these commands inside containers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from common.private_files import make_private_dir, write_private
from common.tls import TlsFiles, issue_server_certificate, make_server_tls

CONFIG_FILE = "federation.toml"
DEFAULT_CONTROL_ADDRESS = "127.0.0.1:9093"
DEFAULT_FLEET_PORT = 9092
DEFAULT_BUDGET_URL = "https://127.0.0.1:8470"


class FederationDirError(RuntimeError):
    """The federation directory is missing, incomplete, or would be overwritten."""


@dataclass(frozen=True)
class FederationConfig:
    """What `federation.toml` holds. Addresses are what the processes dial, not where they listen."""

    control_address: str = DEFAULT_CONTROL_ADDRESS  # the SuperLink's control API, for `flwr` (HTTP over TLS)
    fleet_address: str = f"localhost:{DEFAULT_FLEET_PORT}"  # what hospitals' SuperNodes dial (gRPC over TLS)
    budget_url: str = DEFAULT_BUDGET_URL  # "" = no budget service
    he: bool = False
    dns_names: tuple[str, ...] = ("localhost",)
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    budget_dns_names: tuple[str, ...] = ()  # in the budget service's certificate; () = none issued yet
    budget_ip_addresses: tuple[str, ...] = ()
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def to_toml(self) -> dict:
        return {
            "federation": {"created-at": self.created_at, "he": self.he},
            "superlink": {
                "control-address": self.control_address,
                "fleet-address": self.fleet_address,
                "dns-names": list(self.dns_names),
                "ip-addresses": list(self.ip_addresses),
            },
            "budget": {
                "url": self.budget_url,
                "dns-names": list(self.budget_dns_names),
                "ip-addresses": list(self.budget_ip_addresses),
            },
        }

    @classmethod
    def from_toml(cls, raw: dict) -> FederationConfig:
        """The config a parsed `federation.toml` holds; ValueError naming the key whose value has the wrong type."""
        fed, link, budget = (_table(raw, name) for name in ("federation", "superlink", "budget"))
        return cls(
            control_address=_typed(link, "superlink", "control-address", str, DEFAULT_CONTROL_ADDRESS),
            fleet_address=_typed(link, "superlink", "fleet-address", str, f"localhost:{DEFAULT_FLEET_PORT}"),
            budget_url=_typed(budget, "budget", "url", str, ""),
            he=_typed(fed, "federation", "he", bool, False),
            dns_names=_strings(link, "superlink", "dns-names"),
            ip_addresses=_strings(link, "superlink", "ip-addresses"),
            budget_dns_names=_strings(budget, "budget", "dns-names"),
            budget_ip_addresses=_strings(budget, "budget", "ip-addresses"),
            created_at=_typed(fed, "federation", "created-at", str, ""),
        )


def _table(raw: dict, name: str) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table, not {type(value).__name__}")
    return value


def _typed(table: dict, where: str, key: str, kind: type, default):
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise ValueError(f"{where}.{key} must be a {kind.__name__}, not {value!r}")
    return value


def _strings(table: dict, where: str, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key} must be a list of strings, not {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class FederationDir:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def ca_certificate(self) -> Path:
        return self.root / "superlink" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def server_certificate(self) -> Path:
        return self.root / "superlink" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    @property
    def budget_certificate(self) -> Path:
        return self.root / "budget" / "server.pem"

    @property
    def budget_key(self) -> Path:
        return self.root / "budget" / "server.key"

    def budget_tls(self) -> TlsFiles:
        """The budget service's TLS files (`fedcare budget serve --tls-certfile/--tls-keyfile`), with the CA."""
        return TlsFiles(self.ca_certificate, self.budget_certificate, self.budget_key)

    @property
    def he_dir(self) -> Path:
        return self.root / "he"

    @property
    def admin_token_file(self) -> Path:
        return self.root / "budget" / "admin-token"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.json"

    @property
    def institutions_dir(self) -> Path:
        return self.root / "institutions"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME for the `flwr` CLI calls that register and unregister nodes."""
        return self.root / "flwr-home"

    def kit_dir(self, name: str) -> Path:
        return self.institutions_dir / slugify(name)

    def exists(self) -> bool:
        return self.config_path.exists()

    def config(self) -> FederationConfig:
        if not self.exists():
            raise FederationDirError(
                f"{self.root} is not a federation directory (no {CONFIG_FILE}); "
                f"create one with `fedcare federation init {self.root}`"
            )
        try:
            return FederationConfig.from_toml(tomllib.loads(self.config_path.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise FederationDirError(
                f"{self.config_path} is damaged: {exc}; fix it or restore it from a backup"
            ) from None

    def admin_token(self) -> str:
        try:
            token = self.admin_token_file.read_text().strip()
        except FileNotFoundError:
            raise FederationDirError(
                f"{self.admin_token_file} is missing; the federation directory is incomplete"
            ) from None
        except UnicodeDecodeError:
            raise FederationDirError(f"{self.admin_token_file} is not text; it should hold one token") from None
        if not token or not token.isprintable() or any(c.isspace() for c in token):
            raise FederationDirError(f"{self.admin_token_file} does not hold one token (one line, no spaces)")
        return token


def slugify(name: str) -> str:
    """A folder name for an institution: lower case, letters, digits and dashes (`St. Mary's` -> `st-mary-s`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"institution name {name!r} has no letters or digits to name its kit folder after")
    return slug


def split_sans(sans: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Separate `--san` values into DNS names and IP addresses."""
    names, ips = [], []
    for san in sans:
        try:
            ips.append(str(ipaddress.ip_address(san)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", san):
                raise ValueError(f"--san {san!r} is neither an IP address nor a DNS name") from None
            names.append(san)
    return tuple(names), tuple(ips)


def init_federation(
    root: Path,
    *,
    sans: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    control_address: str = DEFAULT_CONTROL_ADDRESS,
    fleet_address: str | None = None,
    budget_url: str = DEFAULT_BUDGET_URL,
    he: bool = False,
    days: int = 825,
    budget_sans: tuple[str, ...] | None = None,
) -> FederationDir:
    """Create a federation directory: CA, SuperLink and budget certificates, HE keys (if `he`), budget admin token.

    The budget service's certificate names `budget_sans` (default: the SuperLink's `sans`).

    Refuses a directory that already holds a federation: new keys would lock out every issued kit.
    """
    fed = FederationDir(Path(root).resolve())
    if fed.exists():
        raise FederationDirError(
            f"{fed.root} already holds a federation ({CONFIG_FILE}); issued kits trust its CA, "
            "so it is never overwritten. Pick another directory or remove it yourself."
        )
    names, ips = split_sans(sans)
    budget_names, budget_ips = split_sans(sans if budget_sans is None else budget_sans)
    fed.root.mkdir(parents=True, exist_ok=True)
    make_private_dir(fed.ca_key.parent)
    make_server_tls(fed.server_certificate.parent, hostnames=names, ips=ips, days=days, ca_key_path=fed.ca_key)
    if he:
        from common.he.keys import write_keys  # TenSEAL only when asked for

        write_keys(fed.he_dir)
    make_private_dir(fed.admin_token_file.parent)
    write_private(fed.admin_token_file, secrets.token_urlsafe(32) + "\n", exclusive=True)
    _issue_budget_pair(fed, names=budget_names, ips=budget_ips, days=days)
    fed.institutions_dir.mkdir(exist_ok=True)
    host = (names or ips)[0]
    default_fleet = f"[{host}]:{DEFAULT_FLEET_PORT}" if ":" in host else f"{host}:{DEFAULT_FLEET_PORT}"
    config = FederationConfig(
        control_address=control_address,
        fleet_address=fleet_address or default_fleet,
        budget_url=budget_url,
        he=he,
        dns_names=names,
        ip_addresses=ips,
        budget_dns_names=budget_names,
        budget_ip_addresses=budget_ips,
    )
    fed.config_path.write_text(tomli_w.dumps(config.to_toml()))  # written last: its presence means "complete"
    return fed


def _issue_budget_pair(fed: FederationDir, *, names: tuple[str, ...], ips: tuple[str, ...], days: int) -> None:
    make_private_dir(fed.budget_key.parent)
    issue_server_certificate(
        ca_certificate=fed.ca_certificate,
        ca_key=fed.ca_key,
        certificate=fed.budget_certificate,
        key=fed.budget_key,
        hostnames=names,
        ips=ips,
        days=days,
    )


def issue_budget_certificate(fed: FederationDir, *, sans: tuple[str, ...], days: int = 825) -> TlsFiles:
    """(Re-)issue the budget service's certificate for `sans` with the federation's CA, and record the names.

    Hospitals need nothing new: they already trust the CA. Restart the budget service to serve it."""
    config = fed.config()
    names, ips = split_sans(sans)
    _issue_budget_pair(fed, names=names, ips=ips, days=days)
    updated = dataclasses.replace(config, budget_dns_names=names, budget_ip_addresses=ips)
    fed.config_path.write_text(tomli_w.dumps(updated.to_toml()))
    return fed.budget_tls()


def ensure_local_federation(root: Path) -> FederationDir:
    """The federation directory of a throwaway local federation (demo, tests): made once, then reused."""
    fed = FederationDir(Path(root).resolve())
    return fed if fed.exists() else init_federation(fed.root, budget_url="")
