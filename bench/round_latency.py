"""Seconds per round: fedcare plain, SecAgg+ and HE side by side, next to a quickstart-style app on stock Flower.

All fedcare modes run on one real LocalFederation (a SuperLink with TLS and one hospital node per hospital,
separate processes talking gRPC over 127.0.0.1, each node `fedcare node start`: Flower's SuperNode with
fast waits plus the warm ClientApp executor), one run after the other, with the same settings: only
`privacy-mode` differs. fedcare runs with its own defaults, as the demo does (local DP-SGD on;
`--fedcare-set dp=false` times it without). The reference (bench/reference_app, written the way Flower's
quickstart-pytorch is) then runs on a second federation of stock `flower-supernode`s with Flower's own
waits, with the same model, hospital files and local training settings. Per round:

- fedcare plain and HE: one train message per hospital (the incoming global model is scored inside it),
  plus a closing evaluate at the end of the run (HE: and one `query.metrics` exchange);
- fedcare SecAgg+: four message exchanges (key shares, masking, unmasking) per round;
- reference: stock `FedAvg.start`, a train and an evaluate message per hospital per round.

For every run it records the run's `elapsed` (running to finished, from `flwr ls`), the wall time from
`flwr run` to the SuperLink's finished timestamp, the load average before and after, and the CPU seconds each
kind of process spent on it (`cpu_seconds`: the federation's processes, their reaped children included, read
from /proc before and after; the other engineers' load on the same cores moves wall time, hardly CPU time).
`seconds_per_round` is elapsed / rounds. With --baseline-rounds B (default 1) each app also runs B
rounds, and `marginal_seconds_per_round` is (elapsed(R) - elapsed(B)) / (R - B): the cost of one more
round without the fixed start-up and the closing messages. A run counts only if every round got a reply
from every hospital (fedcare: results.json; reference: its ServerApp fails the run otherwise).

    python bench/round_latency.py                        # plain, secagg, he and the reference, 5 rounds
    python bench/round_latency.py --modes plain --no-reference --rounds 3

Prints a table to stderr and a JSON object on stdout, writes OUT/round_latency.json and, when matplotlib
is installed, OUT/round_latency.png. `bench/federation_scale.py` runs 10 hospitals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import tomllib
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from federation_runs import (
    REPO,
    RunTiming,
    check_fedcare_run,
    console,
    fedcare_training_settings,
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

MODES = ("plain", "secagg", "he")
# Goals (issue 13, issue 6): seconds per round, and ratios (numerator, denominator, at most).
GOAL_SECONDS = {"fedcare-plain": 1.5, "fedcare-secagg": 3.0}
GOAL_RATIOS = {
    ("fedcare-plain", "reference"): 0.1,
    ("fedcare-secagg", "fedcare-plain"): 2.0,
    ("fedcare-he", "fedcare-plain"): 1.2,
}
MESSAGES = {"fedcare-plain": (1, 1), "fedcare-secagg": (4, 1), "fedcare-he": (1, 2), "reference": (2, 0)}


# Which kind of process a command line belongs to, first match wins (the ServerApp executor before the hospitals').
ROLES = (
    ("--serverapp", "serverapp-executor"),
    ("flower-superlink", "superlink"),
    ("fedcare.fast_superlink", "superlink"),
    ("fedcare.warm_executor", "clientapp-executors"),
    ("fast_supernode", "supernodes"),
    ("flower-supernode", "supernodes"),
    ("flwr-clientapp", "clientapp-executors"),
)


def cpu_by_role(fed: LocalFederation) -> dict[str, float]:
    """CPU seconds so far of every process in `fed` and their descendants, summed per role (`ROLES`; the rest,
    such as `fedcare node start`'s supervisor, is "other"); a process's reaped children count as its own, and
    this process's reaped children (the `flwr` CLI) as "flwr-cli"."""
    totals: dict[str, float] = {}
    for managed in fed.processes:
        try:
            root = psutil.Process(managed.popen.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                line, t = " ".join(proc.cmdline()), proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            role = next((name for mark, name in ROLES if mark in line), "other")
            totals[role] = totals.get(role, 0.0) + t.user + t.system + t.children_user + t.children_system
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["flwr-cli"] = own.ru_utime + own.ru_stime
    return totals


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {role: round(after.get(role, 0.0) - before.get(role, 0.0), 2) for role in sorted({*before, *after})}
    spent["total"] = round(sum(spent.values()), 2)
    return spent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per timed run (default 5)")
    parser.add_argument("--hospitals", type=int, default=3, help="nodes, one per hospital (default 3)")
    parser.add_argument("--modes", default=",".join(MODES), help="fedcare privacy modes, comma-separated (default all)")
    parser.add_argument(
        "--reference", action=argparse.BooleanOptionalAction, default=True, help="also time stock Flower (default on)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="output folder (default bench/out)")
    parser.add_argument(
        "--baseline-rounds", type=int, default=1, help="also time runs of this many rounds; 0 skips (default 1)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="after the warm-up, measure each process kind's CPU while idle this long (0 skips; default 5)",
    )
    parser.add_argument(
        "--node-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an extra `fedcare node start` option for every fedcare hospital, e.g. --node-option=--fleet-poll=0.2",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per app and round count (medians)")
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first run each app once, 1 round, untimed, so none pays for cold caches (default on)",
    )
    parser.add_argument(
        "--fedcare-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fedcare run-config key, TOML value (e.g. dp=false); repeatable",
    )
    parser.add_argument("--insecure", action="store_true", help="TLS off (the demo and deployments use TLS)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=10.0,
        help="seconds between `flwr ls` polls when the ServerApp executor's log shows no run ending (each costs "
        "about a second of CPU; the stock-Flower reference has no such log)",
    )
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="give up on a run after this many seconds")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    if args.rounds < 1 or args.hospitals < 1 or args.repeats < 1:
        parser.error("--rounds, --hospitals and --repeats must be at least 1")
    if args.baseline_rounds and not 0 < args.baseline_rounds < args.rounds:
        parser.error("--baseline-rounds must be 0 (off) or between 1 and --rounds - 1")
    args.fedcare_overrides = {}
    for item in args.fedcare_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--fedcare-set wants KEY=VALUE, got {item!r}")
        try:
            args.fedcare_overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            args.fedcare_overrides[key] = value  # a bare word is a string
    return args


def summarize(
    timings: list[RunTiming],
    cpu: list[dict[str, Any]],
    *,
    app: str,
    rounds: int,
    baseline_rounds: int,
    hospitals: int,
) -> dict:
    def median(field: str, n: int) -> float:
        return statistics.median(getattr(t, field) for t in timings if t.app == app and t.rounds == n)

    elapsed, total = median("elapsed_seconds", rounds), median("total_seconds", rounds)
    per_round, closing = MESSAGES[app]
    messages = (per_round * rounds + closing) * hospitals
    runs = [t for t in timings if t.app == app]
    summary: dict[str, Any] = {
        "rounds": rounds,
        "total_seconds": round(total, 1),
        "elapsed_seconds": round(elapsed, 1),
        "seconds_per_round": round(elapsed / rounds, 2),
        "total_seconds_per_round": round(total / rounds, 2),
        "messages": messages,
        "clientapp_seconds_per_message": round(median("clientapp_seconds", rounds) / messages, 2),
        "load_average_1min": [min(t.load_before[0] for t in runs), max(t.load_after[0] for t in runs)],
    }
    if baseline_rounds:
        base = median("elapsed_seconds", baseline_rounds)
        summary["baseline_elapsed_seconds"] = round(base, 1)
        summary["marginal_seconds_per_round"] = round((elapsed - base) / (rounds - baseline_rounds), 2)

    def median_cpu(n: int) -> dict[str, float]:
        runs = [c["cpu_seconds"] for c in cpu if c["app"] == app and c["rounds"] == n]
        return {role: statistics.median(r.get(role, 0.0) for r in runs) for role in runs[0]} if runs else {}

    summary["cpu_seconds"] = {role: round(v, 2) for role, v in median_cpu(rounds).items()}
    if baseline_rounds and (base_cpu := median_cpu(baseline_rounds)):
        summary["marginal_cpu_seconds_per_round"] = {
            role: round((v - base_cpu.get(role, 0.0)) / (rounds - baseline_rounds), 2)
            for role, v in summary["cpu_seconds"].items()
        }
    return summary


def ratios(summaries: dict[str, dict]) -> dict[str, dict[str, Any]]:
    out = {}
    for (top, bottom), goal in GOAL_RATIOS.items():
        if top in summaries and bottom in summaries:
            entry: dict[str, Any] = {"goal_at_most": goal}
            for key in ("seconds_per_round", "marginal_seconds_per_round"):
                if key in summaries[top]:
                    entry[key] = round(summaries[top][key] / summaries[bottom][key], 3)
            entry["met"] = entry["seconds_per_round"] <= goal
            out[f"{top} / {bottom}"] = entry
    return out


def table(summaries: dict[str, dict], compared: dict[str, dict]) -> Table:
    t = Table(title="seconds per round (elapsed / rounds); marginal = one more round")
    for column in ("app", "s/round", "marginal s/round", "ClientApp s/msg", "load 1-min", "goal"):
        t.add_column(column)
    for app, s in summaries.items():
        goal = GOAL_SECONDS.get(app)
        verdict = "" if goal is None else f"<= {goal} s: {'met' if s['seconds_per_round'] <= goal else 'NOT met'}"
        load = "-".join(f"{x:.1f}" for x in s["load_average_1min"])
        marginal = str(s.get("marginal_seconds_per_round", ""))
        t.add_row(
            app, f"{s['seconds_per_round']:.2f}", marginal, str(s["clientapp_seconds_per_message"]), load, verdict
        )
    for name, r in compared.items():
        t.add_row(name, f"{r['seconds_per_round']:.3f}x", f"{r.get('marginal_seconds_per_round', '')}x", "", "",
                  f"<= {r['goal_at_most']}x: {'met' if r['met'] else 'NOT met'}")  # fmt: skip
    return t


def plot(summaries: dict[str, dict], path: Path, *, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.log("matplotlib not installed: no plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    apps = list(summaries)
    bars = ax.bar(apps, [summaries[a]["seconds_per_round"] for a in apps])
    ax.bar_label(bars, fmt="%.2f s")
    ax.set_ylabel("seconds per round")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    for owned in ("data", "federation", "federation-stock", "runs", "he", "state"):
        shutil.rmtree(out / owned, ignore_errors=True)
    split = write_demo_split(out / "data", dataset="breast-cancer", hospitals=args.hospitals)
    source, app_dirs = source_state(), snapshot_apps(out / "apps")
    training = fedcare_training_settings(app_dirs["fedcare"])
    keys = write_keys(out / "he") if "he" in args.modes else None
    common = {**training, "schema-path": str(split.schema_path), "min-nodes": args.hospitals}
    fedcare = {**common, "results-dir": str(out / "runs"), **args.fedcare_overrides}
    apps: dict[str, tuple[Path, dict[str, Any], str]] = {}
    for mode in args.modes:  # the same app and settings, only the privacy mode differs
        extra = {"he-public-context": str(keys.server_context)} if mode == "he" and keys else {}
        apps[f"fedcare-{mode}"] = (app_dirs["fedcare"], {**fedcare, "privacy-mode": mode, **extra}, "num-rounds")
    if args.reference:
        ref_config = {**common, "fraction-train": 1.0, "fraction-evaluate": 1.0}
        apps["reference"] = (app_dirs["reference"], ref_config, "num-server-rounds")
    round_counts = [args.rounds] + ([args.baseline_rounds] if args.baseline_rounds else [])
    load_before, started = load_average(), time.time()
    timings: list[RunTiming] = []
    cpu: list[dict[str, Any]] = []  # per timed run: app, rounds, run id and cpu_seconds per role
    seen_pids: set[int] = set()
    fedcare_privacy: dict[str, Any] = {}
    idle_cpu: list[dict[str, float]] = []  # per federation: CPU s per s by role, idle within the nodes' busy window
    for stock in sorted({app == "reference" for app in apps}):
        group = [app for app in apps if (app == "reference") == stock]
        with LocalFederation(
            out / ("federation-stock" if stock else "federation"),
            insecure=args.insecure,
            stock_flower=stock,
            node_options=[] if stock else args.node_option,
        ) as fed:
            kind = "stock Flower SuperNodes" if stock else "fedcare nodes (SuperNode + warm executor)"
            with console.status(f"starting the SuperLink and {args.hospitals} {kind}..."):
                fed.start_superlink()
                nodes = []
                for i, path in enumerate(split.hospital_paths, start=1):
                    config = {"state-dir": str(out / "state" / f"hospital-{i}")}
                    if keys is not None:
                        config["he-secret-context"] = str(keys.hospital_context)
                    nodes.append(
                        fed.add_hospital(institution=f"hospital-{i}", data_path=path, node_config=config, wait=False)
                    )
                for node in nodes:
                    fed.wait_for_node(node)
            console.log(f"federation up: {args.hospitals} {kind}, TLS {'off' if args.insecure else 'on'}")

            def timed(app: str, rounds: int, fed: LocalFederation = fed) -> RunTiming:
                app_dir, config, rounds_key = apps[app]
                cpu_before = cpu_by_role(fed)
                timing = time_run(
                    fed,
                    app=app,
                    app_dir=app_dir,
                    run_config={**config, rounds_key: rounds},
                    rounds=rounds,
                    poll=args.poll_interval,
                    timeout=args.run_timeout,
                )
                spent = cpu_spent(cpu_before, cpu_by_role(fed))
                cpu.append({"app": app, "rounds": rounds, "run_id": timing.run_id, "cpu_seconds": spent})
                if app.startswith("fedcare"):
                    results = check_fedcare_run(
                        out / "runs" / str(timing.run_id) / "results.json", rounds=rounds, hospitals=args.hospitals
                    )
                    fedcare_privacy[app] = {"privacy_mode": results.get("privacy_mode"), "dp": results.get("dp")}
                return timing

            if args.warmup:
                console.log("warm-up (not timed)")
                warm_from = len(cpu)
                for app in group:
                    timed(app, 1)
                del cpu[warm_from:]  # untimed: its FAB installs and noise plans are not a round's
            if args.idle_seconds > 0:
                idle_before = cpu_by_role(fed)
                time.sleep(args.idle_seconds)
                idle = cpu_spent(idle_before, cpu_by_role(fed))
                idle_cpu.append({k: round(v / args.idle_seconds, 3) for k, v in idle.items()})
                console.log(f"idle right after a run, CPU s per s: {idle_cpu[-1]}")
            for repeat in range(args.repeats):
                order = group if repeat % 2 == 0 else list(reversed(group))
                for rounds in round_counts:
                    for app in order:
                        timing = timed(app, rounds)
                        timings.append(timing)
                        console.log(
                            f"{app}, {rounds} rounds: elapsed {timing.elapsed_seconds:.1f} s, "
                            f"{timing.elapsed_seconds / rounds:.2f} s per round, load {timing.load_before[0]:.1f}, "
                            f"CPU s {cpu[-1]['cpu_seconds']}"
                        )
        seen_pids |= fed.seen_pids
    leftovers = leftover_processes(seen_pids)
    if leftovers:
        console.log(f"[red]processes still running after the federation stopped: {leftovers}")

    summaries = {
        app: summarize(
            timings, cpu, app=app, rounds=args.rounds, baseline_rounds=args.baseline_rounds, hospitals=args.hospitals
        )
        for app in apps
    }
    compared = ratios(summaries)
    result: dict[str, Any] = {
        "benchmark": "round_latency",
        "settings": {
            "rounds": args.rounds,
            "hospitals": args.hospitals,
            "baseline_rounds": args.baseline_rounds,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "dataset": "breast-cancer",
            "model": "TabularMLP",
            "tls": not args.insecure,
            **training,
            "fedcare_overrides": args.fedcare_overrides,
            "fedcare_privacy": fedcare_privacy,
        },
        "source": source,
        "apps": summaries,
        "ratios": compared,
        "goal_seconds": {
            app: {"at_most": goal, "met": summaries[app]["seconds_per_round"] <= goal}
            for app, goal in GOAL_SECONDS.items()
            if app in summaries
        },
        "runs": [asdict(t) for t in timings],
        "cpu_runs": cpu,
        "idle_cpu_per_second": idle_cpu,
        "environment": {
            "flwr": version("flwr"),
            "torch": version("torch"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "benchmark_seconds": round(time.time() - started, 1),
        "leftover_processes": leftovers,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"Round latency, {args.hospitals} hospitals, Flower {version('flwr')}"
    if plot(summaries, out / "round_latency.png", title=title):
        console.log(f"plot: {out / 'round_latency.png'}")
    console.print(table(summaries, compared))
    console.log(f"load average {load_before} before, {result['environment']['load_average_after']} after")
    console.log(f"results: {out / 'round_latency.json'}")
    print(json.dumps(result, indent=2))
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
