"""Ten hospitals on one machine: round time of a training run, and memory per site, idle and while training.

Starts a SuperLink (TLS, node authentication), its warm ServerApp executor and N hospital nodes
(`fedcare node start`: SuperNode plus warm executor, each with its own state directory), all on this
machine, then times one untimed 1-round warm-up and one R-round run of fedcare as the demo runs it
(plain by default here, DP on; `--mode he` or `secagg` for the others). Memory is read per site as the
sum over the node's process tree (supervisor, SuperNode, warm executor and its forked ClientApp
children): RSS and USS once idle, and peak RSS sampled every `--sample` seconds while the run trains.
Forked children share most pages with their parent, so a tree's RSS over-counts; USS does not, and the
machine's used memory (before, and peak during the run) is the figure that says whether N sites fit.

    python bench/federation_scale.py --hospitals 10 --rounds 3

Prints JSON on stdout (and a table on stderr) and writes OUT/federation_scale-<N>h.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from federation_runs import (
    REPO,
    check_fedcare_run,
    console,
    leftover_processes,
    load_average,
    snapshot_apps,
    source_state,
    time_run,
)
from rich.table import Table

from common.demo_data import write_demo_split  # noqa: E402  (federation_runs put the checkout on the path)
from common.he.keys import write_keys  # noqa: E402
from fedcare.federation import LocalFederation  # noqa: E402

MB = 2**20


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / MB


def tree_memory(pid: int) -> dict[str, float]:
    rss = uss = 0
    for p in tree(pid):
        try:
            info = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss, uss = rss + info.rss, uss + info.uss
    return {"rss_mb": round(rss / MB, 1), "uss_mb": round(uss / MB, 1)}


class PeakSampler(threading.Thread):
    """Samples each site's tree RSS and the machine's used memory until stopped; keeps the peaks."""

    def __init__(self, pids: dict[str, int], *, every: float) -> None:
        super().__init__(daemon=True)
        self.pids, self.every, self.done = pids, every, threading.Event()
        self.peak_rss = dict.fromkeys(pids, 0.0)
        self.peak_used_mb = 0.0

    def run(self) -> None:
        while not self.done.is_set():
            for name, pid in self.pids.items():
                self.peak_rss[name] = max(self.peak_rss[name], tree_rss(pid))
            self.peak_used_mb = max(
                self.peak_used_mb, (psutil.virtual_memory().total - psutil.virtual_memory().available) / MB
            )
            self.done.wait(self.every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("plain", "secagg", "he"), default="plain")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before the idle reading")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between memory samples during the run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    out = args.out.resolve() / f"scale-{args.hospitals}h"
    shutil.rmtree(out, ignore_errors=True)
    split = write_demo_split(out / "data", dataset="breast-cancer", hospitals=args.hospitals)
    app_dir = snapshot_apps(out / "apps")["fedcare"]
    keys = write_keys(out / "he") if args.mode == "he" else None
    config: dict[str, Any] = {
        "schema-path": str(split.schema_path),
        "min-nodes": args.hospitals,
        "results-dir": str(out / "runs"),
        "privacy-mode": args.mode,
    }
    if keys is not None:
        config["he-public-context"] = str(keys.server_context)
    used_before = (psutil.virtual_memory().total - psutil.virtual_memory().available) / MB
    load_before, started = load_average(), time.time()
    with LocalFederation(out / "federation") as fed:
        with console.status(f"starting the SuperLink and {args.hospitals} hospital nodes..."):
            fed.start_superlink()
            nodes = {}
            for i, path in enumerate(split.hospital_paths, start=1):
                node_config = {"state-dir": str(out / "state" / f"hospital-{i}")}
                if keys is not None:
                    node_config["he-secret-context"] = str(keys.hospital_context)
                nodes[f"hospital-{i}"] = fed.add_hospital(
                    institution=f"hospital-{i}", data_path=path, node_config=node_config, wait=False
                )
            for node in nodes.values():
                fed.wait_for_node(node)
        up_seconds = round(time.time() - started, 1)
        console.log(f"{args.hospitals} nodes up in {up_seconds} s; warm-up run")
        run = {"app": f"fedcare-{args.mode}", "app_dir": app_dir, "poll": 10.0, "timeout": 1800.0}
        time_run(fed, **run, run_config={**config, "num-rounds": 1}, rounds=1)
        time.sleep(args.settle)
        idle = {name: tree_memory(node.popen.pid) for name, node in nodes.items()}
        pids = {name: node.popen.pid for name, node in nodes.items()}
        if fed.serverapp_executor is not None:
            pids["coordinator: ServerApp executor"] = fed.serverapp_executor.popen.pid
        sampler = PeakSampler(pids, every=args.sample)
        sampler.start()
        try:
            timing = time_run(fed, **run, run_config={**config, "num-rounds": args.rounds}, rounds=args.rounds)
        finally:
            sampler.done.set()
            sampler.join()
        check_fedcare_run(
            out / "runs" / str(timing.run_id) / "results.json", rounds=args.rounds, hospitals=args.hospitals
        )
    leftovers = leftover_processes(fed.seen_pids)
    sites = {name: {**idle[name], "peak_rss_mb_during_run": round(sampler.peak_rss[name], 1)} for name in nodes}
    result: dict[str, Any] = {
        "benchmark": "federation_scale",
        "settings": {"hospitals": args.hospitals, "rounds": args.rounds, "mode": args.mode, "dp": "fedcare default"},
        "source": source_state(),
        "nodes_up_seconds": up_seconds,
        "seconds_per_round": round(timing.elapsed_seconds / args.rounds, 2),
        "run": timing.__dict__,
        "sites": sites,
        "site_idle_rss_mb_mean": round(sum(s["rss_mb"] for s in sites.values()) / len(sites), 1),
        "site_idle_uss_mb_mean": round(sum(s["uss_mb"] for s in sites.values()) / len(sites), 1),
        "site_peak_rss_mb_max": max(s["peak_rss_mb_during_run"] for s in sites.values()),
        "serverapp_executor_peak_rss_mb": round(sampler.peak_rss.get("coordinator: ServerApp executor", 0.0), 1),
        "machine_used_mb": {"before": round(used_before), "peak_during_run": round(sampler.peak_used_mb)},
        "load_average": {"before": load_before, "after": load_average()},
        "cpus": os.cpu_count(),
        "benchmark_seconds": round(time.time() - started, 1),
        "leftover_processes": leftovers,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = args.out.resolve() / f"federation_scale-{args.hospitals}h.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    t = Table(title=f"{args.hospitals} hospitals, {args.mode}: {result['seconds_per_round']} s per round")
    for column in ("site", "idle RSS MB", "idle USS MB", "peak RSS MB (run)"):
        t.add_column(column)
    for name, s in sites.items():
        t.add_row(name, str(s["rss_mb"]), str(s["uss_mb"]), str(s["peak_rss_mb_during_run"]))
    console.print(t)
    console.log(f"load {load_before} before, {result['load_average']['after']} after; results: {path}")
    print(json.dumps(result, indent=2))
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
