"""What a fast fleet poll costs the SuperLink: N idle SuperNodes (TLS, node authentication) polling every P s.

For each poll interval the script starts N SuperNodes (`fedcare.fast_supernode`, `--isolation process` and
no executor: they only poll), lets them settle, then measures over a window the CPU seconds per second of
the SuperLink process and of the SuperNodes together, and the fleet's nominal request rate (N / P idle
PullMessages per second). The SuperNodes stop cleanly between intervals (Flower deactivates a node on exit,
so the same kits start again).

    python bench/poll_cost.py --nodes 10 --polls 3 0.5 0.2 0.1 0.05 0.02

Prints JSON on stdout and writes OUT/poll_cost.json, with the load average before and after.
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
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/poll_cost.py` from a checkout

from fedcare.federation import LocalFederation  # noqa: E402
from fedcare.flower_internals import SuperNodeWaits  # noqa: E402
from fedcare.kits import CA_FILE  # noqa: E402
from fedcare.node_keys import PRIVATE_KEY_FILE  # noqa: E402
from fedcare.processes import free_port  # noqa: E402

console = Console(stderr=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(fed: LocalFederation, kits: list[Path], *, poll: float, settle: float, window: float) -> dict[str, Any]:
    waits = SuperNodeWaits(fleet_poll=poll)
    nodes = []
    for i, kit in enumerate(kits, start=1):
        args = [sys.executable, "-m", "fedcare.fast_supernode", f"--fleet-poll={waits.fleet_poll}", "--"]
        args += ["--superlink", f"127.0.0.1:{fed.fleet_port}", "--isolation", "process", "--port", str(free_port())]
        args += ["--root-certificates", str(kit / CA_FILE), "--auth-supernode-private-key", str(kit / PRIVATE_KEY_FILE)]
        args += ["--node-config", f'institution="poll-{i}" data-path="/dev/null"']
        nodes.append(fed._spawn(f"poll-node-{i}", args))
    for node in nodes:
        fed.wait_for_node(node)
    time.sleep(settle)
    superlink = [p.popen.pid for p in fed.processes if p.name == "superlink"]
    node_pids = [p.popen.pid for p in nodes]
    link_before, nodes_before, started = cpu_seconds(superlink), cpu_seconds(node_pids), time.monotonic()
    load_before = os.getloadavg()
    time.sleep(window)
    elapsed = time.monotonic() - started
    result = {
        "poll_seconds": poll,
        "nodes": len(kits),
        "nominal_requests_per_second": round(len(kits) / poll, 1),
        "superlink_cpu_percent": round(100 * (cpu_seconds(superlink) - link_before) / elapsed, 1),
        "supernodes_cpu_percent": round(100 * (cpu_seconds(node_pids) - nodes_before) / elapsed, 1),
        "window_seconds": round(elapsed, 1),
        "load_average": [round(x, 2) for x in load_before],
    }
    fed.stop(only=nodes)  # SIGTERM: a SuperNode deactivates itself, so the same kit may start again at once
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--polls", type=float, nargs="+", default=[3.0, 0.5, 0.2, 0.1, 0.05, 0.02])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the nodes are up (default 5)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per interval (default 30)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    results = []
    load_before = os.getloadavg()
    with LocalFederation(out / "poll-federation", stock_flower=True) as fed:
        fed.start_superlink()
        kits = [fed.ensure_kit(f"poll-{i}") for i in range(1, args.nodes + 1)]
        for poll in args.polls:
            console.log(f"{args.nodes} SuperNodes polling every {poll} s...")
            results.append(measure(fed, kits, poll=poll, settle=args.settle, window=args.window))
            console.log(results[-1])
    report = {
        "benchmark": "poll_cost",
        "results": results,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "poll_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
