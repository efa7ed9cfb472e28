"""Local DP-SGD on 1 process against 2 gloo workers (`local-workers = 2`): seconds per local epoch, and epsilon.

Digits (1,797 rows, 64 features) through a 64-128-10 MLP, batch 64, noise 1.0, clip 1.0, hooks mode (what
`local-workers > 1` uses), 3 epochs. The time per epoch is timed around `train_private` inside the
process that trains (rank 0 for 2 workers, after the group is joined), so the 2 workers' fixed cost
(spawning, importing torch and Opacus, joining the group) is reported apart: the parent's wall time
less the training time. Wall-clock seconds (the workers are other processes). The single process warms up
first (one epoch: Opacus' imports and first-call costs, which each worker pays inside its fixed cost) and
trains with torch's default threads (2 here); each of 2 workers gets 1. Epsilon is the RDP epsilon
(delta 1e-5) of the steps and sample rate each run reports. Two alternating repeats of 1 and 2 workers.

    python bench/ddp.py

Prints a JSON object on stdout and writes bench/out/ddp.json. The machine's load average goes with it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from client.ddp_workers import WORKER_TIMEOUT_S, run_workers
from client.dp_training import train_private
from common.data import HospitalData
from common.dp_event import epsilon_of

EPOCHS = 3
REPEATS = 2
OPTIONS = {
    "batch_size": 64,
    "learning_rate": 0.003,
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "grad_sample_mode": "hooks",
    "seed": 0,
}


def _data() -> HospitalData:
    x, y = load_digits(return_X_y=True)
    return HospitalData(features=(x / 16.0).astype(np.float32), labels=y.astype(np.int64))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _timed_rank(rank: int, data: HospitalData, device: torch.device) -> tuple[float, float, int]:
    started = time.perf_counter()
    outcome = train_private(_model(), data, epochs=EPOCHS, device=device, distributed=True, **OPTIONS)
    return time.perf_counter() - started, outcome.sample_rate, outcome.steps


def _run(workers: int, data: HospitalData) -> dict[str, float]:
    started = time.perf_counter()
    if workers == 1:
        outcome = train_private(_model(), data, epochs=EPOCHS, device=torch.device("cpu"), **OPTIONS)
        seconds, rate, steps = time.perf_counter() - started, outcome.sample_rate, outcome.steps
    else:
        results = run_workers(_timed_rank, data, workers=workers, backend="gloo", timeout_s=WORKER_TIMEOUT_S)
        seconds, rate, steps = results[0]
    wall = time.perf_counter() - started
    eps = epsilon_of([(1.0, rate, steps)], accountant="rdp", delta=1e-5)
    return {
        "seconds_per_epoch": round(seconds / EPOCHS, 3),
        "fixed_seconds": round(wall - seconds, 3),
        "sample_rate": rate,
        "steps": steps,
        "epsilon": eps,
    }


def main() -> None:
    data = _data()
    report: dict[str, object] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    train_private(_model(), data, **{**OPTIONS, "epochs": 1, "device": torch.device("cpu")})  # warm-up
    for repeat in range(REPEATS):
        for workers in (1, 2):
            report[f"workers_{workers}_run_{repeat + 1}"] = _run(workers, data)
    report["load_average_after"] = os.getloadavg()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "ddp.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
