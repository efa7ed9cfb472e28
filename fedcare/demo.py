"""`fedcare demo`: a whole federation on this machine, on built-in data, end to end.

It goes through the same path a deployment does (SuperLink with TLS, one
SuperNode per hospital, a run submitted with the flwr CLI), so a newcomer sees
the real thing, not a simulation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.task_data import load_task_data
from client.training import evaluate
from common.demo_data import DemoDataset, DemoSplit, write_demo_split
from common.private_files import write_private
from common.schema import load_schema
from common.settings import PrivacyMode, UpdateCompression, quorum
from common.tasks.model_task import build_task_model
from fedcare.coordinator_recovery import follow_resuming
from fedcare.demo_defaults import demo_run_config
from fedcare.demo_sites import HOSPITALS_DIR, coordinator_dir, set_up_sites
from fedcare.federation import FederationError, LocalFederation
from fedcare.federation_dir import FederationDir, issue_budget_certificate
from fedcare.kits import RUN_HE_CONTEXT_KEY
from fedcare.registration import BudgetTarget
from server.budget.process import running_budget_service
from server.budget_client.admin import BudgetAdmin

log = logging.getLogger("fedcare.demo")
APP_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoOptions:
    hospitals: int = 3
    rounds: int | None = None  # None: the data set's (fedcare.demo_defaults)
    dataset: DemoDataset = "breast-cancer"
    out: Path = Path("fedcare-demo")
    insecure: bool = False
    run_timeout: float = 1800.0
    dp: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    state_dir: Path | None = None  # default: each hospital's OUT/hospitals/<name>/state; reuse it and epsilon continues
    epsilon_limit: float = 10.0  # each hospital's lifetime limit, enforced by the hospital and the ledger
    delta: float = 1e-5
    mode: PrivacyMode = "he"  # how updates travel: he (CKKS, the default: the server reads no update), secagg, plain
    compress: UpdateCompression = "none"  # int8: plain and secagg modes only (docs/compression.md)
    local_workers: int = 1  # processes per hospital for the local round (docs/compute.md)


@dataclass(frozen=True)
class DemoOutcome:
    run_id: int
    status: str
    results_path: Path
    results: dict[str, Any]
    holdout_accuracy: float | None
    budget_url: str | None = None


def _app_dir() -> Path:
    if not (APP_DIR / "pyproject.toml").exists():
        raise FederationError(
            f"the Flower app sources were not found at {APP_DIR}; "
            "run the demo from a fedcare checkout (pip install -e .)"
        )
    return APP_DIR


def _read_results(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet


def holdout_accuracy(results: dict[str, Any], split: DemoSplit, *, he_context: Path | None = None) -> float | None:
    """Score the final model on rows no hospital ever held (in HE mode, decrypted as a hospital would)."""
    if not results.get("final_model_path"):
        return None
    schema = load_schema(split.schema_path)
    model = build_task_model(schema)
    if results["final_model_path"].endswith(".he"):
        from client.he_export import decrypt_model
        from common.server_optimizer import server_optimizer_from_record

        assert he_context is not None, "an HE run's model needs the hospitals' context to decrypt"
        state_dict, _ = decrypt_model(
            Path(results["final_model_path"]),
            context=he_context,
            schema=schema,
            optimizer=server_optimizer_from_record(results.get("server_optimizer") or {}),
        )
    else:
        state_dict = torch.load(results["final_model_path"], weights_only=True)
    model.load_state_dict(state_dict)
    return evaluate(model, load_task_data(split.holdout_path, schema), device=torch.device("cpu")).accuracy


def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoOutcome:
    console = console or Console(stderr=True)
    dataset_config = demo_run_config(options.dataset)
    options = replace(options, rounds=options.rounds or dataset_config["num-rounds"])
    out = options.out.resolve()
    split = write_demo_split(out / "data", dataset=options.dataset, hospitals=options.hospitals)
    console.print(
        f"[bold]fedcare demo[/]: {options.hospitals} hospitals, {options.rounds} rounds, {options.dataset}, "
        f"mode {options.mode} (schema and held-out rows in {split.schema_path.parent})"
    )

    fed_dir = coordinator_dir(out)
    with contextlib.ExitStack() as stack:
        budget = None
        if options.dp:
            budget = BudgetTarget(
                stack.enter_context(_budget_service(fed_dir)), fed_dir.admin_token(), fed_dir.ca_certificate
            )
        # The same path as a deployment: each hospital makes its own keys in OUT/hospitals/<name>, the
        # coordinator (OUT/coordinator, a federation directory) registers its request and issues a kit, the
        # hospital installs it; in HE mode hospital-1 makes the CKKS key set and the coordinator relays it sealed.
        with console.status("hospitals join with their own keys; the coordinator registers them..."):
            sites = set_up_sites(
                fed_dir,
                out / HOSPITALS_DIR,
                {f"hospital-{i}": path for i, path in enumerate(split.hospital_paths, start=1)},
                epsilon_limit=options.epsilon_limit,
                delta=options.delta,
                budget=budget,
                he=options.mode == "he",
            )
        console.print(
            f"coordinator: {fed_dir.root} (no hospital's secret); hospitals: {out / HOSPITALS_DIR}/<name> "
            "(each its own node key, sealing key, budget token, accountant, data)"
        )
        fed = stack.enter_context(LocalFederation(fed_dir.root, insecure=options.insecure, budget=budget))
        with console.status("starting the SuperLink and the hospitals' nodes (SuperNode + warm executor)..."):
            fed.start_superlink()  # completes the node registrations left pending
            fed.wait_for_nodes(
                [
                    fed.add_site(site.root, node_config=_node_config(options, name), wait=False)
                    for name, site in sites.hospitals.items()
                ]
            )
        tls = (
            "[bold red]off (INSECURE: no TLS, no node authentication; registrations stay pending)[/]"
            if options.insecure
            else f"on, node authentication on (kits issued in {fed_dir.institutions_dir})"
        )
        console.print(
            f"SuperLink up: Fleet API (gRPC) 127.0.0.1:{fed.fleet_port}, "
            f"control API 127.0.0.1:{fed.control_port}, TLS {tls}"
        )

        run_config = {
            **dataset_config,
            "num-rounds": options.rounds,
            "schema-path": str(split.schema_path),
            "results-dir": str(fed_dir.root / "runs"),
            "min-nodes": quorum(options.hospitals),  # a dead hospital does not end the run (2 of 3)
            "privacy-mode": options.mode,
            "update-compression": options.compress,
            "local-workers": options.local_workers,
            **_privacy_config(options),
        }
        if sites.key_id is not None:
            run_config[RUN_HE_CONTEXT_KEY] = str(sites.he_public_context)
            console.print(
                f"HE mode: hospital-1 made CKKS key set {sites.key_id}; each hospital holds the secret in its own "
                f"folder, the coordinator relayed sealed copies and keeps only {sites.he_public_context}, "
                "which cannot decrypt"
            )
        if budget is not None:
            run_config |= _aggregator_token(fed_dir, budget, options=options)
            console.print(
                f"privacy budget service: {budget.url}  dashboard: "
                f"{budget.url}/dashboard?token=<admin token in {fed_dir.admin_token_file}>"
            )
        if not options.dp:
            console.print("[bold red]WARNING: differential privacy is OFF (--no-dp): updates carry no DP guarantee[/]")
        accountants = options.state_dir.resolve() if options.state_dir else out / HOSPITALS_DIR / "<hospital>/state"
        console.print(f"privacy accountants: {accountants}/privacy-accountant.json")
        run_id = fed.submit(app_dir=_app_dir(), run_config=run_config)
        results_path = fed_dir.root / "runs" / str(run_id) / "results.json"
        console.print(f"run {run_id} submitted; logs: {fed.workdir / 'logs'}")
        try:
            follow = partial(_follow, fed, results_path=results_path, options=options, console=console)
            status = follow_resuming(  # and resume the run if the coordinator crashes (docs/resume.md)
                fed, follow, run_dir=results_path.parent, app_dir=_app_dir(), flower_run_id=run_id, console=console
            )
        except BaseException:
            fed.stop_run(run_id)
            raise

    results = _read_results(results_path) or {}
    # In HE mode the final model is decrypted as a hospital would: with the secret context in hospital-1's folder.
    he_context = sites.he_secret_context
    accuracy = holdout_accuracy(results, split, he_context=he_context) if status == "finished:completed" else None
    outcome = DemoOutcome(run_id, status, results_path, results, accuracy, budget.url if budget else None)
    print_summary(outcome, console=console)
    return outcome


def _node_config(options: DemoOptions, name: str) -> dict[str, object]:
    """Overrides of the site's node-config.toml: its accountant elsewhere with --state-dir."""
    config: dict[str, object] = {"epsilon-limit": options.epsilon_limit}
    if options.state_dir is not None:
        config["state-dir"] = str(options.state_dir.resolve() / name)
    return config


@contextlib.contextmanager
def _budget_service(fed: FederationDir):
    """The ledger in the coordinator's budget/ folder, under the federation directory's admin token, over TLS
    with the certificate the federation's CA issued for it (issued now for a demo folder made before that)."""
    budget_dir = fed.admin_token_file.parent
    if not fed.budget_certificate.exists():
        issue_budget_certificate(fed, sans=("localhost", "127.0.0.1", "::1"))
    with running_budget_service(
        database_url=f"sqlite:///{budget_dir / 'ledger.db'}",
        admin_token=fed.admin_token(),
        log_path=budget_dir / "service.log",
        # Not waiting for its Opacus import (4 CPU-s): it runs while the hospitals make their keys and the nodes
        # start, and the first DP event comes 15 s or more later (one that found it still loading waits in the
        # ServerApp's outbox, and is delivered, not lost).
        wait_for_accounting=False,
        tls=fed.budget_tls(),
    ) as url:
        yield url


def _aggregator_token(fed: FederationDir, budget: BudgetTarget, *, options: DemoOptions) -> dict[str, object]:
    """Give this run's ServerApp an aggregator token for the ledger."""
    with BudgetAdmin(budget.url, budget.admin_token, ca_certificate=budget.ca_certificate) as admin:
        for i in range(1, options.hospitals + 1):  # registered with their kits; idempotent (a --no-dp site's kit)
            admin.ensure_institution(f"hospital-{i}", options.epsilon_limit, options.delta)
        token = admin.create_aggregator_token("demo-serverapp")
    token_file = write_private(fed.admin_token_file.parent / "aggregator-token", token)
    return {"budget-url": budget.url, "budget-token-file": str(token_file), "budget-ca-file": str(fed.ca_certificate)}


def _privacy_config(options: DemoOptions) -> dict[str, object]:
    if not options.dp:
        return {"dp": False}
    if options.noise_multiplier is not None and options.target_epsilon is not None:
        raise ValueError("give either a noise multiplier or a target epsilon, not both")
    config: dict[str, object] = {"dp": True, "delta": options.delta}
    if options.noise_multiplier is not None:
        config["noise-multiplier"] = options.noise_multiplier
        config["target-epsilon"] = 0.0  # a fixed noise replaces the per-run target
    if options.target_epsilon is not None:
        config["target-epsilon"] = options.target_epsilon
    return config


def _follow(fed: LocalFederation, *, run_id: int, results_path: Path, options: DemoOptions, console: Console) -> str:
    """Show a progress bar fed by results.json until Flower reports the run finished."""
    rounds, timeout = options.rounds, options.run_timeout
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
    )
    watch = fed.watch(run_id)  # `flwr ls` costs a second of CPU: asked when the run's ServerApp ends
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("federated training", total=rounds)
        while True:
            results = _read_results(results_path)
            if results:
                done = [r for r in results["rounds"] if r["status"] == "aggregated"]
                scored = [r for r in results["rounds"] if r.get("accuracy") is not None]
                desc = "federated training"
                if scored:
                    desc += f" (round {scored[-1]['round']} accuracy {scored[-1]['accuracy']:.3f})"
                progress.update(task, completed=len(results["rounds"]), description=desc)
                if len(done) < len(results["rounds"]):
                    progress.update(
                        task, description=f"{desc} [red]{len(results['rounds']) - len(done)} failed round(s)"
                    )
            status = str(watch.check().get("status", ""))
            if status.startswith("finished"):
                return status
            if time.monotonic() > deadline:
                raise FederationError(f"run {run_id} did not finish within {timeout:.0f} s (status {status})")
            time.sleep(0.5)


def print_summary(outcome: DemoOutcome, *, console: Console) -> None:
    table = Table(title=f"run {outcome.run_id}: {outcome.status}")
    for column in ("round", "status", "hospitals", "train loss", "val loss", "val accuracy", "epsilon (max)"):
        table.add_column(column, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    initial = outcome.results.get("initial") or {}
    table.add_row("0", "initial", "", "", fmt(initial.get("loss")), fmt(initial.get("accuracy")), "")
    for r in outcome.results.get("rounds", []):
        spent = [e for e in r["epsilon"].values() if e is not None]
        table.add_row(
            str(r["round"]),
            r["status"],
            str(len(r["participants"])),
            fmt(r["train_loss"]),
            fmt(r["loss"]),
            fmt(r["accuracy"]),
            f"{max(spent):.3f}" if spent else "off",
        )
    console.print(table)
    if outcome.holdout_accuracy is not None:
        console.print(
            f"final model accuracy on held-out data (no hospital saw it): [bold]{outcome.holdout_accuracy:.4f}[/]"
        )
    if outcome.budget_url:
        console.print(
            f"privacy ledger: {outcome.budget_url}/v1/budgets "
            "(stopped with the demo; `fedcare budget serve` reopens it)"
        )
    _print_bytes(outcome.results, console=console)
    console.print(f"results.json: {outcome.results_path}")
    if outcome.results.get("final_model_path"):
        console.print(f"final model:  {outcome.results['final_model_path']}")


def _print_bytes(results: dict[str, Any], *, console: Console) -> None:
    """Bytes on the wire per round, from results.json (update-compression int8 makes the model part ~4x smaller)."""
    rounds = [r for r in results.get("rounds", []) if r.get("bytes_down") is not None]
    if rounds:
        up = sum(sum(r["bytes_up"].values()) for r in rounds) / len(rounds)
        down = sum(r["bytes_down"] for r in rounds) / len(rounds)
        console.print(
            f"bytes per round ({results.get('update_compression', 'none')}): {up:,.0f} up from all hospitals, "
            f"{down:,.0f} down to each"
        )
