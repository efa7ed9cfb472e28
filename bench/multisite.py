"""Rounds over slow, lossy links against loopback: seconds per round, bytes per hospital, memory per site.

For each hospital count (3 and 10 by default) it sets up hospital-made keys (`tests/support/multisite.py`)
and runs one HE run of 3 rounds with DP on, twice: with every site on this host's loopback, and with every
site in its own network namespace, each hospital behind a 20 Mbit/s link (tbf) and a relay that adds
40 ms of round trip and resets a connection every `--cut-every` seconds on average (`tests/support/netns.py`).
- seconds per round: between rounds landing in results.json (round 1 counts from the submission);
- bytes per hospital per round: the relay's counters over the run, divided by the rounds (netns only);
- memory per site: the peak, over the run, of the summed RSS (and PSS) of the processes in its namespace.

Needs root (network namespaces). Prints JSON and writes OUT/multisite.json, with the load average; each
run's folders (sites, logs, results.json) stay under OUT/<N>h-<placement>/:

    sudo python bench/multisite.py [--hospitals 3 10] [--rounds 3] [--cut-every 20] [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/multisite.py` from a checkout

from common.demo_data import write_demo_split  # noqa: E402
from fedcare.he_relay import server_key_files  # noqa: E402
from fedcare.kits import RUN_HE_CONTEXT_KEY  # noqa: E402
from tests.support import netns  # noqa: E402
from tests.support.multisite import APP_DIR, multisite_federation  # noqa: E402

MB = 1024 * 1024


def one_run(
    root: Path, hospitals: int, *, rounds: int, namespaces: bool, cut_every: float, round_timeout: float
) -> dict[str, Any]:
    split = write_demo_split(root / "data", dataset="breast-cancer", hospitals=hospitals)
    names = [f"hospital-{i}" for i in range(1, hospitals + 1)]
    data = dict(zip(names, split.hospital_paths, strict=True))
    started = time.monotonic()
    topology = netns.build_topology(names, workdir=root / "net") if namespaces else None
    relay = {"delay": 0.02, "cut_every": cut_every, "outage": 1.0}
    peak: dict[str, dict[str, int]] = {}

    def sample() -> None:
        if topology is not None:
            for site, memory in topology.memory_by_site().items():
                kept = peak.setdefault(site, {"rss": 0, "pss": 0})
                for kind in kept:
                    kept[kind] = max(kept[kind], memory[kind])

    try:
        with multisite_federation(root / "sites", data, topology=topology, relay=relay, activation_timeout=900) as site:
            ready = time.monotonic()
            before = topology.counters() if topology else None
            run_config = {
                "num-rounds": rounds,
                "local-epochs": 1,
                "schema-path": str(split.schema_path),
                "results-dir": str(site.runs),
                "min-nodes": hospitals,
                "privacy-mode": "he",
                "round-timeout": round_timeout,  # a cut can lose a message (tests/integration/test_multisite.py)
                RUN_HE_CONTEXT_KEY: str(server_key_files(site.federation).server_context),
            }
            submitted = time.monotonic()
            run_id = site.fed.submit(app_dir=APP_DIR, run_config=run_config)
            status, landed = site.round_times(run_id, timeout=1800, sample=sample)
            time.sleep(0.6)  # the relay writes its counters twice a second
            after = topology.counters() if topology else None
            results = site.results(run_id)
    finally:
        if topology is not None:
            topology.close()
    gaps = [b - a for a, b in zip([submitted, *landed], landed, strict=False)]
    row: dict[str, Any] = {
        "hospitals": hospitals,
        "placement": "netns" if namespaces else "loopback",
        "status": status,
        "rounds": [r["status"] for r in results["rounds"]],
        "participants": [len(r["participants"]) for r in results["rounds"]],
        "error": results.get("error"),
        "setup_s": round(ready - started, 1),
        "round_s": [round(g, 2) for g in gaps],
        "mean_round_after_first_s": round(statistics.mean(gaps[1:]), 2) if len(gaps) > 1 else None,
        "run_s": round(landed[-1] - submitted, 1) if landed else None,
    }
    if before is not None and after is not None:
        row["bytes_per_hospital_per_round"] = {
            name: {
                "up": (after["sites"][name]["up"] - before["sites"][name]["up"]) // rounds,
                "down": (after["sites"][name]["down"] - before["sites"][name]["down"]) // rounds,
            }
            for name in names
        }
        row["cuts"] = len(after["cuts"]) - len(before["cuts"])
        row["reconnections"] = sum(after["sites"][n]["connections"] - before["sites"][n]["connections"] for n in names)
        row["peak_memory_mb"] = {site: {k: round(v / MB) for k, v in m.items()} for site, m in peak.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cut-every", type=float, default=20.0, help="mean seconds between the relay's cuts")
    parser.add_argument(
        "--round-timeout", type=float, default=240.0, help="s a round waits for replies (a cut can lose one)"
    )
    parser.add_argument("--placement", choices=["both", "netns", "loopback"], default="both")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    netns.require_netns()
    netns.sweep_leftovers()
    load_before = os.getloadavg()
    rows = []
    for hospitals in args.hospitals:
        pair = {"both": (False, True), "netns": (True,), "loopback": (False,)}[args.placement]
        for namespaces in pair:  # side by side, so the load is alike for the pair
            root = args.out / f"{hospitals}h-{'netns' if namespaces else 'loopback'}"  # kept: logs, results.json
            shutil.rmtree(root, ignore_errors=True)
            row = one_run(
                root,
                hospitals,
                rounds=args.rounds,
                namespaces=namespaces,
                cut_every=args.cut_every,
                round_timeout=args.round_timeout,
            )
            row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    report = {
        "bench": "multisite",
        "cut_every_s": args.cut_every,
        "round_timeout_s": args.round_timeout,
        "rows": rows,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multisite.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
