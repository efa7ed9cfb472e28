"""`fedcare he`: make the federation's CKKS keys, and let a hospital decrypt the final model.

The key ceremony's other steps (roster, relay, install) are in `fedcare.he_ceremony_cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

he_app = typer.Typer(
    help="Homomorphic encryption (CKKS): make keys, decrypt the final model.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


def _bit_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give comma-separated bit sizes, e.g. 60,40") from None


@he_app.command()
def keygen(
    site: Annotated[
        Path | None, typer.Option(help="At a hospital: its site directory; the secret context stays there.")
    ] = None,
    roster: Annotated[
        Path | None, typer.Option(help="With --site: the coordinator's roster.json (who receives the secret).")
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="With --site: where to write the bundle for the coordinator (nothing secret).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Instead of --site: write hospital/ and server/ here (single-operator setups and tests)."),
    ] = None,
    poly_modulus_degree: Annotated[
        int, typer.Option(help="CKKS ring degree: 4096 (default), 8192, 16384, 32768.")
    ] = 4096,
    coeff_mod_bit_sizes: Annotated[
        str, typer.Option(help="Prime sizes in bits, comma-separated; the last is SEAL's special prime.")
    ] = "60,40",
    scale_bits: Annotated[int, typer.Option(help="CKKS scale 2**BITS: precision below the point.")] = 40,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing keys (models encrypted under them become unreadable).")
    ] = False,
) -> None:
    """Make the federation's CKKS key set: at a hospital (--site, sealed to the roster) or into one folder (--out)."""
    from common.he.keys import HEKeyError, write_keys
    from common.he.params import HEConfigError, HEParams

    params = HEParams(
        poly_modulus_degree=poly_modulus_degree,
        coeff_mod_bit_sizes=_bit_sizes(coeff_mod_bit_sizes),
        global_scale_bits=scale_bits,
    )
    if site is not None:
        if roster is None or bundle is None or out is not None:
            raise typer.BadParameter("--site needs --roster and --bundle, and no --out")
        from fedcare.he_ceremony_cli import make_key_set_at_site

        make_key_set_at_site(site, roster=roster, bundle=bundle, params=params)
        return
    if out is None:
        raise typer.BadParameter("give --site (a hospital makes the key set) or --out (single operator)")
    try:
        files = write_keys(out, params, overwrite=force)
    except (HEConfigError, HEKeyError) as exc:
        errors.print(f"[red]no keys written:[/] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"HE key material (key id {files.key_id})")
    for name in ("file", "give it to", "bytes", "mode"):
        table.add_column(name)
    for path, who in (
        (files.hospital_context, "every hospital, and no one else (holds the SECRET key)"),
        (files.hospital_params, "every hospital"),
        (files.server_context, "the server (parameters only, no key)"),
        (files.server_params, "the server"),
    ):
        table.add_row(str(path), who, str(path.stat().st_size), oct(path.stat().st_mode & 0o777))
    table.caption = (
        f"degree {params.poly_modulus_degree}, primes {list(params.coeff_mod_bit_sizes)}, scale "
        f"2**{params.global_scale_bits}; sums must stay within ±{params.max_abs_value:,.0f}"
    )
    console.print(table)
    console.print(
        "Anyone holding he-secret.ctx can read every update and the model: copy hospital/ only to hospitals, "
        "server/ only to the server. In a federation, a hospital makes the keys instead: `--site`."
    )


@he_app.command()
def decrypt(
    context: Annotated[Path, typer.Option(help="The hospitals' he-secret.ctx.")],
    encrypted: Annotated[Path, typer.Option(help="The encrypted model the server wrote (e.g. final_model.he).")],
    schema: Annotated[Path, typer.Option(help="The federation's data schema: it names the model's architecture.")],
    out: Annotated[Path, typer.Option(help="Where to write the plaintext model (a torch state dict, .pt).")],
    results: Annotated[
        Path | None,
        typer.Option(help="The run's results.json: its server optimizer, needed when the run used fedavgm or fedadam."),
    ] = None,
) -> None:
    """Decrypt an encrypted model (a hospital's step: the server cannot) and export it as a state dict."""
    import torch

    from client.he_export import decrypt_model
    from common.he.keys import HEKeyError
    from common.he.params import HEConfigError
    from common.he.wire import InvalidCiphertext
    from common.schema import SchemaError, load_schema

    try:
        optimizer = None
        if results is not None:
            from common.server_optimizer import server_optimizer_from_record

            optimizer = server_optimizer_from_record(json.loads(results.read_text()).get("server_optimizer") or {})
        state_dict, h = decrypt_model(encrypted, context=context, schema=load_schema(schema), optimizer=optimizer)
    except (HEKeyError, HEConfigError, InvalidCiphertext, SchemaError, OSError, ValueError) as exc:
        errors.print(f"[red]cannot decrypt:[/] {exc}")
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out)
    console.print(
        f"wrote {out}: run {h.run_id} round {h.server_round}, {h.contributors} hospital(s), "
        f"{h.num_examples} examples, {h.num_values} values"
    )


if __name__ == "__main__":
    he_app()
