"""Local DP-SGD on 1 process against 2 gloo workers (`local-workers = 2`): seconds per local epoch, and epsilon.

Digits (1,797 rows, 64 features) through a 64-128-10 MLP, batch 64, noise 1.0, clip 1.0, hooks mode (what
`local-workers > 1` uses). Each setting trains E = 1 and E = 4 epochs; the time per epoch is
(t(4) - t(1)) / 3, so the 2-worker figure leaves out its fixed cost (spawning, importing torch and Opacus,
joining the group), which is reported apart as t(1) - per-epoch. Wall-clock seconds: the workers are
other processes. Epsilon is the RDP epsilon (delta 1e-5) of the steps and sample rate each run reports.

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

from client.ddp_workers import WORKER_TIMEOUT_S, train_private_workers
from client.dp_training import train_private
from common.data import HospitalData
from common.dp_event import epsilon_of

OPTIONS = {"batch_size": 64, "learning_rate": 0.003, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "seed": 0}


def _data() -> HospitalData:
    x, y = load_digits(return_X_y=True)
    return HospitalData(features=(x / 16.0).astype(np.float32), labels=y.astype(np.int64))


def _run(workers: int, epochs: int, data: HospitalData) -> tuple[float, float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    cpu = torch.device("cpu")
    started = time.perf_counter()
    if workers == 1:
        outcome = train_private(model, data, epochs=epochs, device=cpu, grad_sample_mode="hooks", **OPTIONS)
    else:
        outcome = train_private_workers(
            model, data, workers=workers, epochs=epochs, device=cpu, timeout_s=WORKER_TIMEOUT_S, **OPTIONS
        )
    seconds = time.perf_counter() - started
    eps = epsilon_of([(1.0, outcome.sample_rate, outcome.steps)], accountant="rdp", delta=1e-5)
    return seconds, eps


def main() -> None:
    data = _data()
    report: dict[str, object] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    for workers in (1, 2):
        t1, _ = _run(workers, 1, data)
        t4, eps4 = _run(workers, 4, data)
        per_epoch = (t4 - t1) / 3
        report[f"workers_{workers}"] = {
            "seconds_per_epoch": round(per_epoch, 3),
            "fixed_seconds": round(t1 - per_epoch, 3),
            "epsilon_4_epochs": eps4,
        }
    report["load_average_after"] = os.getloadavg()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "ddp.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
