"""`fedcare model export`: the run's final model as a file a hospital loads and runs with torch alone.

The report puts the exported model next to float32 in the same format (TorchScript), in size and in
accuracy on held-out rows (`--data`; the demo writes them as data/holdout.csv), so the cost of int8 is
measured on the model at hand rather than assumed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from client.task_data import load_task_data
from client.training import evaluate
from common.quantized_model import load_for_inference, quantize_for_inference, save_for_inference
from common.schema import DatasetSchema, SchemaError, load_schema
from common.tasks.model_task import TaskError, build_task_model


class ModelExportError(RuntimeError):
    """The run's model cannot be exported; the message says what to give instead."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    int8: bool
    size: int  # bytes of the exported file
    float32_size: int  # the same model as float32 TorchScript
    state_dict_size: int  # the run's final_model.pt
    accuracy: float | None  # of the exported file, on --data (None without it)
    float32_accuracy: float | None
    examples: int  # held-out rows scored


def _schema(schema: Path | None, data: Path | None) -> DatasetSchema:
    """The federation's schema: given, or the demo's schema.json beside its held-out rows."""
    if schema is None and data is not None and (data.parent / "schema.json").exists():
        schema = data.parent / "schema.json"
    if schema is None:
        raise ModelExportError("give --schema (the federation's schema JSON): it names the model's architecture")
    return load_schema(schema)


def _weights(run_dir: Path, model: Path | None) -> Path:
    path = model if model is not None else run_dir / "final_model.pt"
    if model is None and not path.exists() and (run_dir / "final_model.he").exists():
        raise ModelExportError(
            f"{run_dir} holds an encrypted model (HE mode); a hospital decrypts it first with "
            "`fedcare he decrypt --encrypted .../final_model.he --schema ... --out model.pt`, then exports "
            "with --model model.pt"
        )
    if not path.exists():
        raise ModelExportError(f"{path}: no final model; did the run complete? (results.json says)")
    return path


def export_model(
    run_dir: Path,
    *,
    int8: bool,
    data: Path | None = None,
    schema: Path | None = None,
    model: Path | None = None,
    out: Path | None = None,
) -> ExportReport:
    """Export the run's final model (int8 or float32 TorchScript) and score both forms on `data`."""
    try:
        weights = _weights(run_dir, model)
        spec = _schema(schema, data)
        network = build_task_model(spec)
        network.load_state_dict(torch.load(weights, weights_only=True))
        held_out = load_task_data(data, spec) if data is not None else None
    except (SchemaError, TaskError, RuntimeError, OSError) as exc:  # RuntimeError: weights of another architecture
        if isinstance(exc, ModelExportError):
            raise
        raise ModelExportError(str(exc)) from exc
    network.eval()
    out = out if out is not None else run_dir / f"final_model.{'int8' if int8 else 'float32'}.ts"
    size = save_for_inference(quantize_for_inference(network) if int8 else network, out)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    accuracy = float32_accuracy = None
    if held_out is not None:
        cpu = torch.device("cpu")
        accuracy = evaluate(load_for_inference(out), held_out, device=cpu).accuracy  # the file, as a hospital loads it
        float32_accuracy = evaluate(network, held_out, device=cpu).accuracy
    return ExportReport(
        path=out,
        int8=int8,
        size=size,
        float32_size=len(buffer.getvalue()),
        state_dict_size=weights.stat().st_size,
        accuracy=accuracy,
        float32_accuracy=float32_accuracy,
        examples=len(held_out) if held_out is not None else 0,
    )
