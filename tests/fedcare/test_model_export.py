"""`fedcare model export --int8`: a file a hospital loads with torch alone, smaller, scoring like float32."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from client.training import train_plain
from common.data import load_hospital_table
from common.demo_data import DemoDataset, DemoSplit, write_demo_split
from common.models import build_model
from common.quantized_model import Int8WeightConv2d, quantize_for_inference
from common.schema import DatasetSchema, load_schema
from fedcare.cli import app
from fedcare.model_export import ModelExportError, export_model

Trained = Callable[[DemoDataset], tuple[DemoSplit, Path]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Per data set, once: a run directory as the ServerApp leaves it (final_model.pt), trained briefly on
    one hospital's rows, and the demo's split with its held-out rows."""
    made: dict[str, tuple[DemoSplit, Path]] = {}

    def make(dataset: DemoDataset) -> tuple[DemoSplit, Path]:
        if dataset not in made:
            root = tmp_path_factory.mktemp(dataset)
            split = write_demo_split(root / "data", dataset=dataset, hospitals=2)
            schema = load_schema(split.schema_path)
            model = build_model(schema, seed=1)
            data = load_hospital_table(split.hospital_paths[0], schema)
            train_plain(model, data, batch_size=32, epochs=1, learning_rate=0.1, device=torch.device("cpu"), seed=1)
            run_dir = root / "runs" / "1"
            run_dir.mkdir(parents=True)
            torch.save(model.state_dict(), run_dir / "final_model.pt")
            made[dataset] = (split, run_dir)
        return made[dataset]

    return make


def _digits_schema() -> DatasetSchema:
    return DatasetSchema.model_validate(
        {
            "features": [{"name": f"p{i}"} for i in range(64)],
            "label": "y",
            "num_classes": 10,
            "model": "cnn",
            "input_shape": [1, 8, 8],
        }
    )


@pytest.mark.parametrize("dataset", ["breast-cancer", "digits"])
def test_the_int8_export_is_smaller_and_scores_like_float32(trained: Trained, dataset: DemoDataset) -> None:
    split, run_dir = trained(dataset)
    report = export_model(run_dir, int8=True, data=split.holdout_path)  # the schema is found beside the data
    assert report.path == run_dir / "final_model.int8.ts" and report.path.stat().st_size == report.size
    assert report.size < report.float32_size
    if dataset == "digits":  # int8 must show in the CNN's file: at least half of 3 bytes saved per parameter
        params = sum(p.numel() for p in build_model(load_schema(split.schema_path)).parameters())
        assert report.float32_size - report.size >= 0.5 * 3 * params
    assert report.examples > 50 and report.accuracy is not None and report.float32_accuracy is not None
    assert abs(report.accuracy - report.float32_accuracy) <= 0.05


def test_a_hospital_loads_and_runs_the_file_without_fedcare(tmp_path: Path, trained: Trained) -> None:
    split, run_dir = trained("digits")
    report = export_model(run_dir, int8=True, data=split.holdout_path, out=tmp_path / "model.int8.ts")
    schema = load_schema(split.schema_path)
    held_out = load_hospital_table(split.holdout_path, schema)
    np.save(tmp_path / "x.npy", held_out.features[:20])
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("common", "client", "server", "fedcare"):
            sys.modules[name] = None  # importing any of fedcare's packages now fails
        import numpy as np, torch
        model = torch.jit.load({str(report.path)!r}); model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = build_model(schema)
    model.load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(held_out.features[:20])).numpy()
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == expected.shape == (20, 10)
    assert np.abs(logits - expected).max() < 0.1 * np.abs(expected).max()


def test_convolutions_keep_int8_weights_and_linears_are_dynamically_quantized() -> None:
    model = build_model(_digits_schema())
    quantized = quantize_for_inference(model)
    convs = [m for m in quantized.modules() if isinstance(m, Int8WeightConv2d)]
    assert len(convs) == 2 and all(c.weight_int8.dtype == torch.int8 for c in convs)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert (
        linears >= 1
        and sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules()) == linears
    )
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())  # the original is left as it was


def test_an_he_run_and_a_missing_schema_are_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "final_model.he").write_bytes(b"ciphertext")
    with pytest.raises(ModelExportError, match="fedcare he decrypt.*--model"):
        export_model(tmp_path, int8=True, schema=tmp_path / "s.json")
    (tmp_path / "final_model.pt").write_bytes(b"weights")
    with pytest.raises(ModelExportError, match="give --schema"):
        export_model(tmp_path, int8=True)


def test_the_command_reports_size_and_accuracy(tmp_path: Path, trained: Trained) -> None:
    split, run_dir = trained("breast-cancer")
    result = CliRunner().invoke(app, ["model", "export", str(run_dir), "--int8", "--data", str(split.holdout_path)])
    assert result.exit_code == 0, result.output
    assert "int8 (exported)" in result.output and "held-out" in result.output and "torch.jit.load" in result.output
    refused = CliRunner().invoke(app, ["model", "export", str(tmp_path / "nowhere"), "--int8"])
    assert refused.exit_code == 1
