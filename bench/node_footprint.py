"""What one idle hospital node costs: RSS and CPU of `fedcare node start`'s processes, next to stock Flower's.

Starts a SuperLink (TLS, node authentication) and one hospital, waits until it is up and idle, then reads
each process of the node (supervisor, SuperNode, warm executor; stock: SuperNode and its SuperExec) for
RSS, USS (memory no other process shares) and CPU over a window. Stock Flower's ClientApp process, which
exists only while a message runs, is not in the idle figure.

    python bench/node_footprint.py [--window 20]

Prints JSON on stdout and writes OUT/node_footprint.json, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/node_footprint.py` from a checkout

from common.demo_data import write_demo_split  # noqa: E402
from fedcare.federation import LocalFederation  # noqa: E402


def footprint(root_pid: int, *, window: float) -> dict[str, Any]:
    root = psutil.Process(root_pid)
    procs = [root, *root.children(recursive=True)]
    cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    rows = []
    for p in procs:
        memory = p.memory_full_info()
        rows.append(
            {
                "command": " ".join(p.cmdline()[1:4])[:80],
                "rss_mb": round(memory.rss / 2**20, 1),
                "uss_mb": round(memory.uss / 2**20, 1),
                "cpu_percent": round(100 * (sum(p.cpu_times()[:2]) - cpu_before[p.pid]) / elapsed, 1),
            }
        )
    return {
        "processes": rows,
        "rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "uss_mb": round(sum(r["uss_mb"] for r in rows), 1),
        "cpu_percent": round(sum(r["cpu_percent"] for r in rows), 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds of idle measured (default 20)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before measuring (default 10)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    split = write_demo_split(out / "footprint-data", dataset="breast-cancer", hospitals=1)
    report: dict[str, Any] = {"benchmark": "node_footprint", "cpus": os.cpu_count()}
    for stock in (False, True):
        with LocalFederation(out / "footprint-federation", stock_flower=stock) as fed:
            fed.start_superlink()
            node = fed.add_hospital(
                institution="hospital-1", data_path=split.hospital_paths[0], node_config={"state-dir": str(out / "st")}
            )
            time.sleep(args.settle)
            report["stock_flower" if stock else "fedcare_node"] = footprint(node.popen.pid, window=args.window)
    out.mkdir(parents=True, exist_ok=True)
    (out / "node_footprint.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
