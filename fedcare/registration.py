"""Register, rotate and revoke institutions.

The kit on disk, the node key at the SuperLink, the token at the budget service.

The kit is always made first; the two remote halves are then attempted and,
when a service is not running, recorded as pending in the registry. `sync`
finishes whatever is pending, and starting a local federation calls it, so a
coordinator can issue kits before anything runs.

Two ways in, one record: a hospital's registration request (it made its own
keys; the kit holds no private key and its budget token is sealed to the
hospital), or the one-step path where the coordinator makes the keys, for
single-operator setups only. The record says which (`keys_made_by`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.federation_dir import FederationDir
from fedcare.kits import SEALED_TOKEN_FILE, TOKEN_FILE, KitOptions, write_budget_token, write_kit
from fedcare.registration_request import RegistrationRequest
from fedcare.registry import InstitutionRecord, Registry, now
from fedcare.superlink_control import SuperLinkConnection, SuperLinkControl, SuperLinkError, SuperLinkUnavailable
from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetServiceError, BudgetServiceUnavailable

log = logging.getLogger("fedcare.registration")
SYNC_WORKERS = 8  # institutions registered at once by `sync`


class RegistrationError(RuntimeError):
    """A registration the coordinator must change before it can go ahead (the message says how)."""


@dataclass(frozen=True)
class BudgetTarget:
    url: str
    admin_token: str
    ca_certificate: Path | None = None  # an https URL is verified against it: the federation's CA


@dataclass
class RegistrationReport:
    """What one command did for one institution, for the CLI to print."""

    name: str
    kit: Path
    record: InstitutionRecord
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[str]:
        return self.record.pending


def superlink_connection(fed: FederationDir, *, address: str | None = None) -> SuperLinkConnection:
    """The coordinator's connection to the SuperLink's control API, from federation.toml unless overridden."""
    return SuperLinkConnection(address or fed.config().control_address, fed.ca_certificate)


def budget_target(fed: FederationDir, *, url: str | None = None) -> BudgetTarget | None:
    """The budget service to register with, from federation.toml unless overridden; None when it has none."""
    url = fed.config().budget_url if url is None else url
    return BudgetTarget(url, fed.admin_token(), fed.ca_certificate) if url else None


def register_institution(
    fed: FederationDir,
    options: KitOptions,
    *,
    request: RegistrationRequest | None = None,
    rotate: bool = False,
    superlink: SuperLinkConnection | None,
    budget: BudgetTarget | None,
) -> RegistrationReport:
    """Issue `options.name`'s kit and register it; an existing name is refused unless `rotate` (new key, new token).

    With a `request`, the hospital's own public keys are registered and the kit holds no private key;
    without, the coordinator makes the node key pair (single-operator setups).
    """
    if request is not None and request.institution != options.name:
        raise RegistrationError(
            f"the request is for {request.institution!r}, not {options.name!r}; register it under its own name"
        )
    config = fed.config()
    with Registry(fed.registry_path).locked() as registry:
        slug = fed.kit_dir(options.name).name
        old = registry.institutions.get(slug)
        if old is not None and old.name != options.name:
            raise RegistrationError(
                f"{options.name!r} and the registered {old.name!r} share the kit folder "
                f"institutions/{slug}; choose a more distinct name"
            )
        if old is not None and not rotate:
            state = "revoked" if not old.active else "registered"
            raise RegistrationError(
                f"{options.name!r} is already {state} (kit {fed.kit_dir(options.name)}); "
                "pass --rotate to issue a new key and token (the old ones stop working)"
            )
        kit, node_key_fingerprint = write_kit(fed, options, config=config, request=request)
        for token_file in (TOKEN_FILE, SEALED_TOKEN_FILE):  # a rotated kit gets a new token, or none until sync
            (kit / token_file).unlink(missing_ok=True)
        record = InstitutionRecord(
            name=options.name,
            slug=slug,
            epsilon_limit=options.epsilon_limit,
            delta=options.delta,
            fingerprint=node_key_fingerprint,
            budget="pending" if (budget is not None or config.budget_url) else "off",
            keys_made_by="coordinator" if request is None else "institution",
            sealing_public_key=None if request is None else request.sealing_public_key,
        )
        if old is not None:
            record.created_at = old.created_at
            still_known = old.node_id is not None and old.superlink != "revoked"
            record.stale_node_ids = [*old.stale_node_ids, *([old.node_id] if still_known else [])]
            record.budget_institution_id = old.budget_institution_id
            if old.budget == "off" and budget is None:
                record.budget = "off"
        registry.institutions[slug] = record
        made = "no private key: the institution made its keys" if request else "the coordinator made the keys"
        report = RegistrationReport(
            options.name, kit, record, done=[f"kit written to {kit} (key {node_key_fingerprint}; {made})"]
        )
        _complete(fed, record, report, superlink=superlink, budget=budget)
    return report


def revoke_institution(
    fed: FederationDir, name: str, *, superlink: SuperLinkConnection | None, budget: BudgetTarget | None
) -> RegistrationReport:
    """Unregister the institution's node (the SuperLink drops it) and disable its budget token."""
    with Registry(fed.registry_path).locked() as registry:
        record = _find(registry, fed, name)
        if not record.active:
            raise RegistrationError(f"{name!r} was already revoked at {record.revoked_at}")
        record.revoked_at = record.updated_at = now()
        if record.superlink == "registered":
            record.superlink = "revoke-pending"
        elif record.superlink == "pending":
            record.superlink = "revoked"  # its key was never admitted
        if record.budget != "off":
            record.budget = "revoke-pending"
        report = RegistrationReport(record.name, fed.kit_dir(record.name), record)
        _complete(fed, record, report, superlink=superlink, budget=budget)
    return report


def sync(
    fed: FederationDir,
    *,
    superlink: SuperLinkConnection | None,
    budget: BudgetTarget | None,
    only: set[str] | None = None,
) -> list[RegistrationReport]:
    """Finish every pending registration and revocation (those of `only` slugs, if given).

    The institutions are done side by side: each is a `flwr` CLI process (about a second of CPU and 1.5-2.5 s
    of wall time here) and an HTTP call to the budget service, and each touches only its own record and kit."""
    with Registry(fed.registry_path).locked() as registry:
        pending = [
            record
            for slug, record in registry.institutions.items()
            if record.pending and (only is None or slug in only)
        ]
        reports = [RegistrationReport(record.name, fed.kit_dir(record.name), record) for record in pending]
        with ThreadPoolExecutor(max_workers=max(1, min(len(pending), SYNC_WORKERS))) as pool:
            done = pool.map(lambda r: _complete(fed, r.record, r, superlink=superlink, budget=budget), reports)
            for _ in done:  # an error in any of them is raised here, as it was one after the other
                pass
    return reports


def list_institutions(fed: FederationDir) -> list[InstitutionRecord]:
    return sorted(Registry(fed.registry_path).snapshot().values(), key=lambda r: r.created_at)


def _find(registry: Registry, fed: FederationDir, name: str) -> InstitutionRecord:
    record = registry.institutions.get(fed.kit_dir(name).name)
    if record is None:
        known = ", ".join(r.name for r in registry.institutions.values()) or "none"
        raise RegistrationError(f"no institution named {name!r} in {fed.root} (registered: {known})")
    return record


def _complete(
    fed: FederationDir,
    record: InstitutionRecord,
    report: RegistrationReport,
    *,
    superlink: SuperLinkConnection | None,
    budget: BudgetTarget | None,
) -> None:
    """Do the remote work `record` still needs; what cannot be done now stays pending."""
    if superlink is not None:
        try:
            _complete_superlink(fed, record, report, SuperLinkControl(superlink, home=fed.flwr_home))
        except SuperLinkUnavailable as exc:
            report.problems.append(f"SuperLink not reachable, left pending ({exc})")
        except SuperLinkError as exc:
            report.problems.append(f"SuperLink refused: {exc}")
    if budget is not None and record.budget in ("pending", "revoke-pending"):
        try:
            with BudgetAdmin(
                budget.url, budget.admin_token, retries=1, timeout=5.0, ca_certificate=budget.ca_certificate
            ) as client:
                _complete_budget(fed, record, report, client)
        except BudgetServiceUnavailable as exc:
            report.problems.append(f"budget service not reachable, left pending ({exc})")
        except BudgetServiceError as exc:
            report.problems.append(f"budget service refused: {exc}")
    record.updated_at = now()


def _complete_superlink(
    fed: FederationDir, record: InstitutionRecord, report: RegistrationReport, control: SuperLinkControl
) -> None:
    for node_id in list(record.stale_node_ids):
        control.unregister(node_id)
        record.stale_node_ids.remove(node_id)
        report.done.append(f"SuperLink: old node {node_id} unregistered")
    if record.superlink == "pending":
        record.node_id = control.register(fed.kit_dir(record.name) / "node.pub", name=record.slug)
        record.superlink = "registered"
        report.done.append(f"SuperLink: node key registered as node {record.node_id}")
    elif record.superlink == "revoke-pending":
        if record.node_id is not None:
            control.unregister(record.node_id)
        record.superlink = "revoked"
        report.done.append(f"SuperLink: node {record.node_id} unregistered (it can no longer connect)")


def _complete_budget(
    fed: FederationDir, record: InstitutionRecord, report: RegistrationReport, client: BudgetAdmin
) -> None:
    if record.budget == "pending":
        view = client.ensure_institution(record.name, record.epsilon_limit, record.delta)
        token = view.token or client.rotate_institution_token(view.id)  # existing: a new token, the old one stops
        write_budget_token(fed.kit_dir(record.name), token, sealing_public_key=record.sealing_public_key)
        record.budget, record.budget_institution_id = "registered", view.id
        report.done.append(
            f"budget service: institution {view.id} registered, token "
            f"{'sealed into' if record.sealing_public_key else 'written to'} the kit "
            f"({'new' if view.token else 'rotated'})"
        )
    elif record.budget == "revoke-pending":
        view = client.find_institution(record.name)
        revoked = client.revoke_institution_tokens(view.id) if view is not None else 0
        record.budget = "revoked"
        report.done.append(f"budget service: {revoked} token(s) disabled")
