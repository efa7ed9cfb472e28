"""Final accuracy of the 3-hospital federation at epsilon 1, 3, 8 and without DP.

Two ways, same code paths for training and aggregation:
- `--simulate` (default): the hospitals' DP-SGD (`client.dp_training.train_private`) and the
  server's `fedavg` run in this process, round by round, on the demo's non-IID split. Fast.
- `--real`: the real federation (`fedcare.federation.LocalFederation`: SuperLink, one
  SuperNode per hospital, TLS), one run per configuration with fresh privacy state.
Both score the final global model on the held-out rows no hospital saw.

    python bench/utility.py [--datasets breast-cancer digits] [--epsilons 1 3 8 0] [--real]
Prints JSON and writes bench/out/utility.json. Epsilon 0 means DP off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from opacus.accountants.utils import get_noise_multiplier

from client.dp_training import plan_round, train_private
from client.training import evaluate, train_plain
from common.data import load_hospital_table, split_train_validation
from common.demo_data import write_demo_split
from common.models import build_model
from common.schema import load_schema
from server.fedavg import ClientUpdate, fedavg

REPO = Path(__file__).resolve().parents[1]
# Per-dataset settings: the run config a coordinator would choose for this data.
SETTINGS = {
    "breast-cancer": {"learning-rate": 0.03, "batch-size": 16, "local-epochs": 2, "num-rounds": 5},
    "digits": {"learning-rate": 0.005, "batch-size": 64, "local-epochs": 3, "num-rounds": 20},
}
DELTA, SEED = 1e-5, 42


def simulate(split_dir: Path, *, settings: dict[str, float], epsilon: float) -> float:
    schema = load_schema(split_dir / "schema.json")
    hospitals = [
        split_train_validation(load_hospital_table(p, schema), validation_fraction=0.2, seed=SEED)[0]
        for p in sorted(split_dir.glob("hospital-*.csv"))
    ]
    holdout = load_hospital_table(split_dir / "holdout.csv", schema)
    bs, ep, lr, rounds = (
        int(settings["batch-size"]),
        int(settings["local-epochs"]),
        float(settings["learning-rate"]),
        int(settings["num-rounds"]),
    )
    cpu = torch.device("cpu")
    global_model = build_model(schema, seed=SEED)
    for rnd in range(rounds):
        updates = []
        for i, train in enumerate(hospitals):
            model = build_model(schema)
            model.load_state_dict(global_model.state_dict())
            common = {"batch_size": bs, "epochs": ep, "learning_rate": lr, "amp": "off", "device": cpu, "seed": rnd}
            if epsilon > 0:
                q, steps = plan_round(num_examples=len(train), batch_size=bs, epochs=ep)
                sigma = get_noise_multiplier(
                    target_epsilon=epsilon, target_delta=DELTA, sample_rate=q, steps=steps * rounds, accountant="rdp"
                )
                train_private(model, train, noise_multiplier=float(sigma), max_grad_norm=1.0, **common)
            else:
                train_plain(model, train, **common)
            updates.append(ClientUpdate(f"h{i}", i, {k: v.numpy() for k, v in model.state_dict().items()}, len(train)))
        global_model.load_state_dict({k: torch.from_numpy(v) for k, v in fedavg(updates).items()})
    return evaluate(global_model, holdout, device=cpu).accuracy


def real(split_dir: Path, work: Path, *, settings: dict[str, float], epsilon: float) -> float:
    from fedcare.federation import LocalFederation

    schema_path = split_dir / "schema.json"
    with LocalFederation(work / "fed") as fed:
        fed.start_superlink()
        for i, path in enumerate(sorted(split_dir.glob("hospital-*.csv")), start=1):
            fed.add_hospital(
                institution=f"hospital-{i}", data_path=path, node_config={"state-dir": str(work / f"state-{i}")}
            )
        run_config = {
            **settings,
            "schema-path": str(schema_path),
            "results-dir": str(work / "runs"),
            "min-nodes": 3,
            "dp": epsilon > 0,
            "target-epsilon": epsilon if epsilon > 0 else 3.0,
            "delta": DELTA,
            "amp": "off",
        }
        run_id = fed.submit(app_dir=REPO, run_config=run_config)
        while not (status := fed.run_status(run_id)).startswith("finished"):
            time.sleep(2)
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended {status}; logs in {work / 'fed' / 'logs'}")
    results = json.loads((work / "runs" / str(run_id) / "results.json").read_text())
    schema = load_schema(schema_path)
    model = build_model(schema)
    model.load_state_dict(torch.load(results["final_model_path"], weights_only=True))
    return evaluate(model, load_hospital_table(split_dir / "holdout.csv", schema), device=torch.device("cpu")).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["breast-cancer", "digits"], choices=list(SETTINGS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, 0.0])
    parser.add_argument("--real", action="store_true", help="run the real multi-process federation")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory(prefix="fedcare-utility-") as tmp:
        for dataset in args.datasets:
            split_dir = Path(tmp) / dataset
            write_demo_split(split_dir, dataset=dataset, hospitals=3)
            for eps in args.epsilons:
                started = time.perf_counter()
                if args.real:
                    accuracy = real(split_dir, Path(tmp) / f"{dataset}-{eps}", settings=SETTINGS[dataset], epsilon=eps)
                else:
                    accuracy = simulate(split_dir, settings=SETTINGS[dataset], epsilon=eps)
                row = {
                    "dataset": dataset,
                    "epsilon": eps or None,
                    "accuracy": round(accuracy, 4),
                    "seconds": round(time.perf_counter() - started, 1),
                    "settings": SETTINGS[dataset],
                }
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    report = {
        "benchmark": "utility",
        "mode": "real" if args.real else "simulated",
        "delta": DELTA,
        "results": rows,
        "goals": {"breast-cancer@eps3": 0.94, "digits@eps3": 0.86},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"utility-{report['mode']}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
