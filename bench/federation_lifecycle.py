"""One federation's life, phase by phase, the way the demo and every integration test live it.

Start the SuperLink (TLS, node authentication, the ServerApp executor), add 3 hospitals with `fedcare node
start` and wait until their executors are warm, submit a 2-round plain run (DP on), wait until Flower reports it
finished, and stop everything. Each phase's wall seconds, repeated `--repeats` times.

Run from a checkout; to compare two commits, run it in both checkouts one after the other (alternating, so the
load is shared), each with the virtualenv inside the checkout as CI has it (`flwr run` builds its FAB from there).

    python bench/federation_lifecycle.py [--repeats 2]

Prints JSON on stdout and writes OUT/federation_lifecycle.json, with the load average around each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/federation_lifecycle.py` from a checkout

from federation_runs import load_average, source_state  # noqa: E402

from common.demo_data import write_demo_split  # noqa: E402
from fedcare.federation import LocalFederation  # noqa: E402

PHASES = ("superlink", "hospitals_ready", "submit", "run_until_seen_finished", "stop")


def one_life(root: Path) -> dict[str, float]:
    split = write_demo_split(root / "data", dataset="breast-cancer", hospitals=3)
    seconds: dict[str, float] = {}
    mark = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal mark
        seconds[phase] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()

    with LocalFederation(root / "fed") as fed:
        fed.start_superlink()
        lap("superlink")
        nodes = [
            fed.add_hospital(
                institution=f"hospital-{i}",
                data_path=path,
                node_config={"state-dir": str(root / f"state-{i}")},
                wait=False,
            )
            for i, path in enumerate(split.hospital_paths, start=1)
        ]
        fed.wait_for_nodes(nodes)
        lap("hospitals_ready")
        run_config = {
            "num-rounds": 2,
            "schema-path": str(split.schema_path),
            "results-dir": str(root / "runs"),
            "min-nodes": 3,
        }
        run_id = fed.submit(app_dir=REPO, run_config=run_config)
        lap("submit")
        status = fed.wait_finished(run_id, timeout=600)
        lap("run_until_seen_finished")
    lap("stop")
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended {status}; logs in {root / 'fed' / 'logs'}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="federations started one after the other (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    lives = []
    for _ in range(args.repeats):
        load_before = load_average()
        with tempfile.TemporaryDirectory(prefix="fedcare-lifecycle-") as tmp:
            seconds = one_life(Path(tmp))
        total = round(sum(seconds.values()), 2)
        lives.append({**seconds, "total": total, "load_before": load_before, "load_after": load_average()})
    report: dict[str, Any] = {
        "benchmark": "federation_lifecycle",
        "source": source_state(),
        "cpus": os.cpu_count(),
        "lives": lives,
        "median": {p: statistics.median(life[p] for life in lives) for p in (*PHASES, "total")},
    }
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "federation_lifecycle.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
