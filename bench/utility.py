"""Final held-out accuracy of the 3-hospital non-IID federation at epsilon 1, 3, 8 and without DP.

Every configuration runs with the federation's defaults (`common.settings.TrainingSettings`) plus the
demo's per-data-set settings (`fedcare.demo_defaults`): what `fedcare demo --dataset D --mode plain`
trains. Two ways, same code paths for training and aggregation:
- `--simulate` (default): the hospitals' DP-SGD (`client.dp_training.train_private`), the server's
  `fedavg` and the run's server optimizer (`common.server_optimizer`) in this process, round by round,
  on the demo's non-IID split, with the noise a hospital plans for the whole run. Fast.
- `--real`: the real federation (`fedcare.federation.LocalFederation`: SuperLink, one SuperNode per
  hospital, TLS), one run per configuration with fresh privacy state.
Both score the final global model on the held-out rows no hospital saw.

    python bench/utility.py [--datasets breast-cancer digits] [--epsilons 1 3 8 0] [--real] [--set KEY=VALUE ...]
Prints a table and JSON (with the load average, since the machine is shared) and writes
bench/out/utility-<mode>.json. Epsilon 0 means DP off. A new built-in data set (the image task) needs
only its row in `fedcare.demo_defaults.DATASET_RUN_CONFIG` and its demo split in `common.demo_data`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from client.dp_training import plan_round, train_private
from client.task_data import load_task_data
from client.training import evaluate, train_plain
from common.data import split_train_validation
from common.demo_data import write_demo_split
from common.schema import load_schema
from common.server_optimizer import ServerOptimizer
from common.settings import TrainingSettings
from common.tasks.model_task import build_task_model
from fedcare.demo_defaults import DATASET_RUN_CONFIG, demo_run_config
from server.fedavg import ClientUpdate, fedavg

REPO = Path(__file__).resolve().parents[1]
HOSPITALS = 3
GOALS = {"breast-cancer@eps3": 0.94, "digits@eps3": 0.86}


def run_config(dataset: str, *, epsilon: float, overrides: dict[str, str]) -> dict[str, Any]:
    """The run config of one configuration: the demo's for the data set, DP at `epsilon` (0: off)."""
    config: dict[str, Any] = {**demo_run_config(dataset), **overrides, "dp": epsilon > 0}
    if epsilon > 0:
        config["target-epsilon"] = epsilon
    return config


def _hospital_paths(split_dir: Path) -> list[Path]:
    """Each hospital's data: a CSV table, or an image folder per hospital (the image task)."""
    return sorted(p for p in split_dir.glob("hospital-*") if p.suffix == ".csv" or p.is_dir())


def _holdout_path(split_dir: Path) -> Path:
    return split_dir / "holdout.csv" if (split_dir / "holdout.csv").exists() else split_dir / "holdout"


def simulate(split_dir: Path, *, config: dict[str, Any]) -> tuple[float, list[float]]:
    """(final held-out accuracy, held-out accuracy after each round), all in this process."""
    from opacus.accountants.utils import get_noise_multiplier  # lazy: heavy

    s = TrainingSettings.model_validate(config)
    schema = load_schema(split_dir / "schema.json")
    hospitals = [
        split_train_validation(load_task_data(p, schema), validation_fraction=s.validation_fraction, seed=s.seed)[0]
        for p in _hospital_paths(split_dir)
    ]
    holdout = load_task_data(_holdout_path(split_dir), schema)
    cpu = torch.device("cpu")
    global_model = build_task_model(schema, seed=s.seed)
    optimizer = ServerOptimizer.from_settings(s)
    curve = []
    for rnd in range(1, s.num_rounds + 1):
        updates = []
        for i, train in enumerate(hospitals):
            model = build_task_model(schema)
            model.load_state_dict(global_model.state_dict())
            common = {"batch_size": s.batch_size, "epochs": s.local_epochs, "learning_rate": s.learning_rate}
            common |= {"amp": "off", "device": cpu, "seed": s.seed + rnd}
            if s.dp:
                q, steps = plan_round(num_examples=len(train), batch_size=s.batch_size, epochs=s.local_epochs)
                sigma = get_noise_multiplier(
                    target_epsilon=s.target_epsilon,
                    target_delta=s.delta,
                    sample_rate=q,
                    steps=steps * s.num_rounds,
                    accountant=s.accountant,
                )
                train_private(model, train, noise_multiplier=float(sigma), max_grad_norm=s.max_grad_norm, **common)
            else:
                train_plain(model, train, **common)
            weights = {k: v.numpy().copy() for k, v in model.state_dict().items()}
            updates.append(ClientUpdate(f"hospital-{i + 1}", i, weights, len(train)))
        current = {k: v.numpy().copy() for k, v in global_model.state_dict().items()}
        stepped = optimizer.step(current=current, average=fedavg(updates))
        global_model.load_state_dict({k: torch.from_numpy(v) for k, v in stepped.items()})
        curve.append(round(evaluate(global_model, holdout, device=cpu).accuracy, 4))
    return curve[-1], curve


def real(split_dir: Path, work: Path, *, config: dict[str, Any]) -> tuple[float, list[float]]:
    from fedcare.federation import LocalFederation

    schema_path = split_dir / "schema.json"
    with LocalFederation(work / "fed") as fed:
        fed.start_superlink()
        for i, path in enumerate(_hospital_paths(split_dir), start=1):
            fed.add_hospital(
                institution=f"hospital-{i}", data_path=path, node_config={"state-dir": str(work / f"state-{i}")}
            )
        full = {**config, "schema-path": str(schema_path), "results-dir": str(work / "runs"), "min-nodes": HOSPITALS}
        run_id = fed.submit(app_dir=REPO, run_config=full)
        while not (status := fed.run_status(run_id)).startswith("finished"):
            time.sleep(2)
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended {status}; logs in {work / 'fed' / 'logs'}")
    results = json.loads((work / "runs" / str(run_id) / "results.json").read_text())
    schema = load_schema(schema_path)
    model = build_task_model(schema)
    model.load_state_dict(torch.load(results["final_model_path"], weights_only=True))
    holdout = load_task_data(_holdout_path(split_dir), schema)
    return evaluate(model, holdout, device=torch.device("cpu")).accuracy, []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_RUN_CONFIG), choices=list(DATASET_RUN_CONFIG))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, 0.0])
    parser.add_argument("--real", action="store_true", help="run the real multi-process federation")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config overrides, for tuning")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory(prefix="fedcare-utility-") as tmp:
        for dataset in args.datasets:
            split_dir = Path(tmp) / dataset
            write_demo_split(split_dir, dataset=dataset, hospitals=HOSPITALS)
            for eps in args.epsilons:
                config = run_config(dataset, epsilon=eps, overrides=overrides)
                started, load_before = time.perf_counter(), os.getloadavg()[0]
                if args.real:
                    accuracy, curve = real(split_dir, Path(tmp) / f"{dataset}-{eps}", config=config)
                else:
                    accuracy, curve = simulate(split_dir, config=config)
                row = {
                    "dataset": dataset,
                    "epsilon": eps or None,
                    "accuracy": round(accuracy, 4),
                    "curve": curve,
                    "seconds": round(time.perf_counter() - started, 1),
                    "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before, after
                    "run_config": config,
                }
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    report = {
        "benchmark": "utility",
        "mode": "real" if args.real else "simulated",
        "hospitals": HOSPITALS,
        "split": "non-IID (Dirichlet alpha 0.5 over labels), 20% held out",
        "results": rows,
        "goals": GOALS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"utility-{report['mode']}.json").write_text(json.dumps(report, indent=2))
    print(f"{'dataset':<15}{'epsilon':>9}{'accuracy':>10}{'seconds':>9}  load average")
    for r in rows:
        eps = "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}"
        print(f"{r['dataset']:<15}{eps:>9}{r['accuracy']:>10.4f}{r['seconds']:>9.0f}  {r['load_average']}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
