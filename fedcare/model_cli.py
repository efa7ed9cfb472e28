"""`fedcare model`: what to do with a run's final model (export it for inference at a hospital)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(
    help="A run's final model: export it for inference.", no_args_is_help=True, add_completion=False
)
console = Console()
errors = Console(stderr=True)


@model_app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="The run's directory (holds results.json and final_model.pt).")],
    int8: Annotated[
        bool, typer.Option("--int8/--float32", help="int8 (Linear: dynamic quantization; Conv2d: int8 weights).")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="Held-out rows (CSV/Parquet) to score on, e.g. the demo's data/holdout.csv.")
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="The federation's schema JSON (default: schema.json beside --data).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Weights to export instead of RUN_DIR/final_model.pt (e.g. a decrypted HE model)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write (default RUN_DIR/final_model.int8.ts).")] = None,
) -> None:
    """Write the final model as TorchScript a hospital runs with `torch.jit.load`; report size and accuracy."""
    from fedcare.model_export import ModelExportError, export_model  # torch only when needed

    try:
        report = export_model(run_dir, int8=int8, data=data, schema=schema, model=model, out=out)
    except ModelExportError as exc:
        errors.print(f"[red]cannot export:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"exported {report.path}")
    for column in ("form", "file bytes", "held-out accuracy"):
        table.add_column(column, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row("float32 (TorchScript)", str(report.float32_size), fmt(report.float32_accuracy))
    table.add_row("float32 (final_model.pt, state dict)", str(report.state_dict_size), "")
    table.add_row("int8 (exported)" if report.int8 else "float32 (exported)", str(report.size), fmt(report.accuracy))
    console.print(table)
    if report.examples:
        console.print(f"scored on {report.examples} held-out rows")
    console.print(f"load it at a hospital: model = torch.jit.load({str(report.path)!r}); model.eval()")
