"""The `fedcare` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from common.demo_data import DemoDataset
from common.settings import PrivacyMode, UpdateCompression
from fedcare.budget_cli import budget_app
from fedcare.compose import compose_app
from fedcare.federation import FederationError
from fedcare.federation_cli import federation_app
from fedcare.he_ceremony_cli import add_ceremony_commands
from fedcare.he_cli import he_app
from fedcare.model_cli import model_app
from fedcare.node_cli import node_app
from fedcare.registration_cli import institution_app
from fedcare.run_cli import run_app
from fedcare.site_cli import add_site_commands

app = typer.Typer(help="fedcare: federated learning for hospitals.", no_args_is_help=True, add_completion=False)
add_site_commands(institution_app)  # join, install: the hospital's side of registration
add_ceremony_commands(he_app)  # roster, relay, install: the CKKS key ceremony
console = Console(stderr=True)
app.add_typer(budget_app, name="budget", help="The privacy budget service: serve it, show budgets.")
app.add_typer(
    he_app, name="he", help="Homomorphic-encryption keys: the key ceremony (made at a hospital), decrypt a model."
)
app.add_typer(
    federation_app,
    name="federation",
    help="Set up a federation directory (CA, TLS, HE keys); sync pending registrations.",
)
app.add_typer(compose_app, name="compose", help="Docker compose files: prepare a federation, add a hospital's service.")
app.add_typer(model_app, name="model", help="A run's final model: export it (int8 or float32) for inference.")
app.add_typer(run_app, name="run", help="A run: resume it after a SuperLink or ServerApp crash.")
app.add_typer(node_app, name="node", help="A hospital's node: start its SuperNode and warm ClientApp executor.")
app.add_typer(
    institution_app,
    name="institution",
    help="A hospital joins (its own keys) and installs its kit; the coordinator registers, revokes, lists.",
)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@app.command()
def demo(
    hospitals: Annotated[int, typer.Option(min=2, help="Number of hospitals (SuperNodes).")] = 3,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Federated rounds (default: the data set's, 5 for breast-cancer).")
    ] = None,
    dataset: Annotated[
        DemoDataset,
        typer.Option(
            help="Built-in data set: breast-cancer (MLP), digits (CNN) or images (digit PNG folders, ResNet)."
        ),
    ] = "breast-cancer",
    out: Annotated[Path, typer.Option(help="Where data, federation state, logs and results go.")] = Path(
        "fedcare-demo"
    ),
    insecure: Annotated[bool, typer.Option("--insecure", help="Turn TLS off. For debugging only.")] = False,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="Local DP-SGD at every hospital (on by default).")] = True,
    noise_multiplier: Annotated[
        float | None, typer.Option(min=1e-9, help="Fixed DP noise multiplier instead of a per-run epsilon target.")
    ] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(min=1e-9, help="Choose the noise so the whole run spends this epsilon (default 3).")
    ] = None,
    epsilon_limit: Annotated[float, typer.Option(min=1e-9, help="Each hospital's lifetime epsilon limit.")] = 10.0,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Hospitals' privacy state (default OUT/hospitals/<name>/state); reuse it and epsilon continues."
        ),
    ] = None,
    mode: Annotated[
        PrivacyMode,
        typer.Option(
            help="How updates travel: plain (the server reads them), he (CKKS: the server adds ciphertexts it "
            "cannot read), secagg (SecAgg+: the server learns only the sum)."
        ),
    ] = "he",
    compress: Annotated[
        UpdateCompression,
        typer.Option(
            help="How model weights travel: none (float32) or int8 (about 0.25x the bytes; plain and secagg modes)."
        ),
    ] = "none",
    local_workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes each hospital trains its local round with (Opacus distributed DP: gloo on CPU, "
            "NCCL on GPU); the same epsilon as one process.",
        ),
    ] = 1,
) -> None:
    """Run a real federation on this machine: SuperLink, one SuperNode per hospital, FedAvg."""
    from fedcare.demo import DemoOptions, run_demo  # torch import only when needed

    try:
        if noise_multiplier is not None and target_epsilon is not None:
            raise typer.BadParameter("give --noise-multiplier or --target-epsilon, not both")
        if compress == "int8" and mode == "he":
            raise typer.BadParameter(
                "--compress int8 does not apply to --mode he (updates travel as CKKS ciphertexts); "
                "use --mode plain or --mode secagg"
            )
        options = DemoOptions(
            hospitals=hospitals,
            rounds=rounds,
            dataset=dataset,
            out=out,
            insecure=insecure,
            dp=dp,
            noise_multiplier=noise_multiplier,
            target_epsilon=target_epsilon,
            state_dir=state_dir,
            epsilon_limit=epsilon_limit,
            mode=mode,
            compress=compress,
            local_workers=local_workers,
        )
        outcome = run_demo(options, console=console)
    except FederationError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the demo started has been stopped[/]")
        raise typer.Exit(130) from None
    if outcome.status != "finished:completed":
        console.print(f"[red]run {outcome.run_id} ended as {outcome.status}[/]; see {out / 'federation' / 'logs'}")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
