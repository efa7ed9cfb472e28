"""Seconds per round: fedcare next to a quickstart-style Flower app on stock Flower.

Each app runs on a real LocalFederation (a SuperLink with TLS and one hospital node per
hospital, separate processes talking gRPC over 127.0.0.1), one after the other, with
the same model, hospital files and local training settings (read from fedcare's
pyproject.toml). fedcare runs with its own defaults, as the demo does (local DP-SGD
included while that is the default; `--fedcare-set dp=false` times plain fedcare), on
fedcare's nodes (`fedcare node start`: Flower's SuperNode with fast waits plus the warm
ClientApp executor). The reference runs on stock Flower: `flower-supernode` processes and
Flower's own waits, as a Flower user would run it. They differ in how a round is orchestrated:

- fedcare: one train message per hospital per round (the incoming global model is
  scored inside it), plus one evaluate message at the end of the run;
- reference (bench/reference_app, the way Flower's quickstart-pytorch is written):
  stock `FedAvg.start`, a train and an evaluate message per hospital per round.

With --secagg the pair is fedcare plain against fedcare in SecAgg+ mode (four message
exchanges per round, key shares, masking), same snapshot, same federation, same settings;
the ratio is secagg / plain (goal at most 2.0) and the output is
OUT/round_latency-secagg-<N>h.json, so one invocation per hospital count:

    python bench/round_latency.py --secagg --hospitals 3 --rounds 3
    python bench/round_latency.py --secagg --hospitals 5 --rounds 3

For every run it records the wall time from `flwr run` to the SuperLink's
finished timestamp, and the run's `elapsed` (running to finished) from `flwr ls`.
`seconds_per_round` is elapsed / rounds. With --baseline-rounds B (default 1)
each app also runs B rounds, and `marginal_seconds_per_round` is
(elapsed(R) - elapsed(B)) / (R - B): the cost of one more round, without the
fixed start-up and fedcare's closing evaluate message.

    python bench/round_latency.py --rounds 5

Both apps are copied to OUT/apps before the first run, so every run of one
benchmark uses one version of the code even while the tree is being edited. A run
counts only if every round got a reply from every hospital (fedcare: results.json;
reference: its ServerApp fails the run otherwise).

Prints a JSON object on stdout, writes OUT/round_latency.json and, when
matplotlib is installed, OUT/round_latency.png. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/round_latency.py` from a checkout

from common.demo_data import DemoSplit, write_demo_split  # noqa: E402
from fedcare.federation import CONNECTION, FederationError, LocalFederation  # noqa: E402

REFERENCE_APP = REPO / "bench" / "reference_app"
GOAL_RATIO = 0.1  # fedcare at most 0.1 of the stock-Flower reference's time per round (warm executor issue)
GOAL_SECONDS = {"fedcare": 1.5, "fedcare-secagg": 3.0}  # and at most this many seconds per round
SECAGG_GOAL_RATIO = 2.0  # issue 6: a SecAgg+ round at most twice a plain one
SHARED_KEYS = ("local-epochs", "batch-size", "learning-rate", "validation-fraction", "seed")
SKIP_COPY = shutil.ignore_patterns("__pycache__", "*.pyc")
console = Console(stderr=True)


@dataclass(frozen=True)
class RunTiming:
    app: str
    rounds: int
    run_id: int
    status: str
    total_seconds: float  # `flwr run` called -> SuperLink's finished-at (1 s resolution)
    elapsed_seconds: float  # flwr ls `elapsed`: running-at -> finished-at
    observed_seconds: float  # `flwr run` called -> this script saw the run finished (poll granularity)
    clientapp_seconds: float  # flwr ls compute-time: SuperNode-reported message processing time, summed
    running_at: str
    finished_at: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per timed run (default 5)")
    parser.add_argument("--hospitals", type=int, default=3, help="SuperNodes, one per hospital (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="output folder (default bench/out)")
    parser.add_argument(
        "--baseline-rounds",
        type=int,
        default=1,
        help="also time runs of this many rounds to get the marginal cost of a round; 0 skips (default 1)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs per app and round count; medians reported (default 1)"
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first run each app once, 1 round, untimed, so neither pays for cold caches (default on)",
    )
    parser.add_argument(
        "--fedcare-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fedcare run-config key, TOML value (e.g. dp=false); repeatable",
    )
    parser.add_argument(
        "--secagg",
        action="store_true",
        help="time fedcare plain against fedcare SecAgg+ (privacy-mode secagg) instead of the reference",
    )
    parser.add_argument("--insecure", action="store_true", help="TLS off (the demo and deployments use TLS)")
    parser.add_argument("--poll-interval", type=float, default=3.0, help="seconds between `flwr ls` polls (default 3)")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="give up on a run after this many seconds")
    args = parser.parse_args(argv)
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


def fedcare_training_settings(app_dir: Path) -> dict[str, Any]:
    """fedcare's own local-training settings, so the reference trains exactly the same way."""
    config = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {key: config[key] for key in SHARED_KEYS}


def snapshot_apps(dest: Path) -> dict[str, Path]:
    """Copy both Flower apps; the reference gets its own copy of `common` instead of the installed one."""
    shutil.rmtree(dest, ignore_errors=True)
    fedcare, reference = dest / "fedcare", dest / "reference"
    fedcare.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", fedcare / "pyproject.toml")
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    packages = sorted(
        {pattern.split("/")[0] for pattern in app.get("fab-include", [])} or {"server", "client", "common"}
    )
    for package in packages:
        shutil.copytree(REPO / package, fedcare / package, ignore=SKIP_COPY)
    shutil.copytree(REFERENCE_APP, reference, ignore=SKIP_COPY)
    shutil.copytree(REPO / "common", reference / "common", ignore=SKIP_COPY)
    return {"fedcare": fedcare, "reference": reference}


def source_state() -> dict[str, Any]:
    """The commit the apps were copied from, and which app files differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""  # porcelain lines start with a space

    changed = git("status", "--porcelain", "--", "pyproject.toml", "server", "client", "common", "bench/reference_app")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in changed.splitlines()]}


def run_configs(
    split: DemoSplit,
    apps: dict[str, Path],
    *,
    hospitals: int,
    out: Path,
    training: dict[str, Any],
    fedcare_overrides: dict[str, Any],
    secagg: bool = False,
) -> dict[str, tuple[Path, dict[str, Any], str]]:
    """App name -> (app dir, run config without the round count, key of the round count)."""
    common = {**training, "schema-path": str(split.schema_path), "min-nodes": hospitals}
    fedcare = {**common, "results-dir": str(out / "runs"), **fedcare_overrides}
    if secagg:  # the same app and settings, only the privacy mode differs
        return {
            "fedcare": (apps["fedcare"], {**fedcare, "privacy-mode": "plain"}, "num-rounds"),
            "fedcare-secagg": (apps["fedcare"], {**fedcare, "privacy-mode": "secagg"}, "num-rounds"),
        }
    return {
        "fedcare": (apps["fedcare"], fedcare, "num-rounds"),
        "reference": (
            apps["reference"],
            {**common, "fraction-train": 1.0, "fraction-evaluate": 1.0},
            "num-server-rounds",
        ),
    }


def check_fedcare_run(results_path: Path, *, rounds: int, hospitals: int) -> dict[str, Any]:
    """fedcare's run ends `completed` even when rounds fail; refuse to time such a run."""
    results = json.loads(results_path.read_text())
    aggregated = [r for r in results["rounds"] if r["status"] == "aggregated" and len(r["participants"]) == hospitals]
    if results["status"] != "completed" or len(aggregated) != rounds:
        problems = [
            f"round {r['round']}: {r.get('reason', r['status'])}; rejected {[x['reason'] for x in r['rejected']]}"
            for r in results["rounds"]
            if r not in aggregated
        ]
        raise FederationError(
            f"fedcare run {results['run_id']} ({results['status']}) did not aggregate all {hospitals} "
            f"hospitals in every round: {problems[:3]}; see {results_path}"
        )
    return results


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace(" ", "T"))


def time_run(
    fed: LocalFederation,
    *,
    app: str,
    app_dir: Path,
    run_config: dict[str, Any],
    rounds: int,
    poll: float,
    timeout: float,
) -> RunTiming:
    console.log(f"{app}: submitting a {rounds}-round run")
    started = time.time()
    run_id = fed.submit(app_dir=app_dir, run_config=run_config)
    last_status = ""
    try:
        while True:
            run = fed.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"][0]
            if run["status"] != last_status:
                last_status = run["status"]
                console.log(f"{app}: run {run_id} {last_status} after {time.time() - started:.1f} s")
            if last_status.startswith("finished"):
                break
            if time.time() - started > timeout:
                raise FederationError(
                    f"{app}: run {run_id} did not finish within {timeout:.0f} s (status {last_status})"
                )
            time.sleep(poll)
    except BaseException:
        fed.stop_run(run_id)
        raise
    observed = time.time() - started
    if last_status != "finished:completed":
        raise FederationError(
            f"{app}: run {run_id} ended {last_status}: {run.get('status-details')}; logs in {fed.workdir / 'logs'}"
        )
    return RunTiming(
        app=app,
        rounds=rounds,
        run_id=run_id,
        status=last_status,
        total_seconds=round(_utc(run["finished-at"]).timestamp() - started, 1),
        elapsed_seconds=round(float(run["elapsed"]), 2),
        observed_seconds=round(observed, 1),
        clientapp_seconds=round(float(run["compute-time"]["clientapp-seconds"]), 2),
        running_at=run["running-at"],
        finished_at=run["finished-at"],
    )


def summarize(
    timings: list[RunTiming], *, app: str, rounds: int, baseline_rounds: int, hospitals: int
) -> dict[str, Any]:
    def median(field: str, n: int) -> float:
        return statistics.median(getattr(t, field) for t in timings if t.app == app and t.rounds == n)

    elapsed, total = median("elapsed_seconds", rounds), median("total_seconds", rounds)
    per_round = {"fedcare": 1, "fedcare-secagg": 4}.get(app)  # SecAgg+: four stages, each a message
    messages = (per_round * rounds + 1 if per_round else 2 * rounds) * hospitals
    summary: dict[str, Any] = {
        "rounds": rounds,
        "total_seconds": round(total, 1),
        "elapsed_seconds": round(elapsed, 1),
        "seconds_per_round": round(elapsed / rounds, 2),
        "total_seconds_per_round": round(total / rounds, 2),
        "messages": messages,
        "clientapp_seconds_per_message": round(median("clientapp_seconds", rounds) / messages, 2),
    }
    if baseline_rounds:
        base = median("elapsed_seconds", baseline_rounds)
        summary["baseline_rounds"] = baseline_rounds
        summary["baseline_elapsed_seconds"] = round(base, 1)
        summary["marginal_seconds_per_round"] = round((elapsed - base) / (rounds - baseline_rounds), 2)
    return summary


def leftover_processes(pids: set[int]) -> list[int]:
    alive = []
    for pid in sorted(pids):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def plot(result: dict[str, Any], path: Path, *, pair: tuple[str, str] = ("fedcare", "reference")) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.log("matplotlib not installed: no plot")
        return False
    apps = result["apps"]
    first, second = pair
    measures = [("seconds_per_round", f"elapsed / {result['settings']['rounds']} rounds")]
    if "marginal_seconds_per_round" in apps["fedcare"]:
        measures.append(("marginal_seconds_per_round", "marginal (one more round)"))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(measures)
    for i, (key, label) in enumerate(measures):
        xs = [j + (i - (len(measures) - 1) / 2) * width for j in range(2)]
        values = [apps[first][key], apps[second][key]]
        bars = ax.bar(xs, values, width, label=f"{label}: ratio {result['ratio'][key]:.2f}")
        ax.bar_label(bars, fmt="%.1f s")
    dp = (result["settings"].get("fedcare_privacy", {}).get("dp") or {}).get("enabled")
    fedcare_label = "fedcare" + {True: ", local DP on", False: ", DP off"}.get(dp, "")
    labels = [f"{fedcare_label}\n(train+score in one message)", "quickstart-style reference\n(train, then evaluate)"]
    if second == "fedcare":  # --secagg: SecAgg+ first (the numerator), plain second
        labels = [f"{fedcare_label}, SecAgg+\n(4 stages per round)", f"{fedcare_label}, plain\n(one message per round)"]
    ax.set_xticks(range(2), labels)
    ax.set_ylabel("seconds per round")
    ax.set_title(f"Round latency, {result['settings']['hospitals']} hospitals, Flower {result['environment']['flwr']}")
    ax.legend(loc="upper left")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    for owned in ("data", "federation", "runs"):
        shutil.rmtree(out / owned, ignore_errors=True)
    split = write_demo_split(out / "data", dataset="breast-cancer", hospitals=args.hospitals)
    source = source_state()
    app_dirs = snapshot_apps(out / "apps")
    training = fedcare_training_settings(app_dirs["fedcare"])
    apps = run_configs(
        split,
        app_dirs,
        hospitals=args.hospitals,
        out=out,
        training=training,
        fedcare_overrides=args.fedcare_overrides,
        secagg=args.secagg,
    )
    numerator, denominator = ("fedcare-secagg", "fedcare") if args.secagg else ("fedcare", "reference")
    goal_ratio = SECAGG_GOAL_RATIO if args.secagg else GOAL_RATIO
    fedcare_privacy: dict[str, Any] = {}
    round_counts = [args.rounds] + ([args.baseline_rounds] if args.baseline_rounds else [])
    load_before = os.getloadavg()

    timings: list[RunTiming] = []
    started = time.time()
    seen_pids: set[int] = set()
    # fedcare runs on fedcare's nodes (`fedcare node start`: warm executor, fast waits); the reference on
    # stock Flower (`flower-supernode`, Flower's own waits), each federation up only while its app runs.
    for stock in sorted({app == "reference" for app in apps}):
        group = [app for app in apps if (app == "reference") == stock]
        with LocalFederation(out / "federation", insecure=args.insecure, stock_flower=stock) as fed:
            kind = "stock Flower SuperNodes" if stock else "fedcare nodes (SuperNode + warm executor)"
            with console.status(f"starting the SuperLink and {args.hospitals} {kind}..."):
                fed.start_superlink()
                nodes = [
                    fed.add_hospital(institution=f"hospital-{i}", data_path=path, wait=False)
                    for i, path in enumerate(split.hospital_paths, start=1)
                ]
                for node in nodes:
                    fed.wait_for_node(node)
            console.log(f"federation up: {args.hospitals} {kind}, TLS {'off' if args.insecure else 'on'}")

            def timed(app: str, rounds: int, fed: LocalFederation = fed) -> RunTiming:
                app_dir, config, rounds_key = apps[app]
                return time_run(
                    fed,
                    app=app,
                    app_dir=app_dir,
                    run_config={**config, rounds_key: rounds},
                    rounds=rounds,
                    poll=args.poll_interval,
                    timeout=args.run_timeout,
                )

            if args.warmup:
                console.log("warm-up (not timed)")
                for app in group:
                    warm = timed(app, 1)
                    if app.startswith("fedcare"):  # a broken fedcare tree shows here, before the timed runs
                        check_fedcare_run(
                            out / "runs" / str(warm.run_id) / "results.json", rounds=1, hospitals=args.hospitals
                        )
            for repeat in range(args.repeats):
                order = group if repeat % 2 == 0 else list(reversed(group))
                for rounds in round_counts:
                    for app in order:
                        timing = timed(app, rounds)
                        if app.startswith("fedcare"):
                            results = check_fedcare_run(
                                out / "runs" / str(timing.run_id) / "results.json",
                                rounds=rounds,
                                hospitals=args.hospitals,
                            )
                            if app == "fedcare":
                                fedcare_privacy = {"privacy_mode": results.get("privacy_mode"), "dp": results.get("dp")}
                        timings.append(timing)
                        console.log(
                            f"{app}, {rounds} rounds: elapsed {timing.elapsed_seconds:.0f} s, "
                            f"{timing.elapsed_seconds / rounds:.1f} s per round"
                        )
        seen_pids |= fed.seen_pids
    leftovers = leftover_processes(seen_pids)
    if leftovers:
        console.log(f"[red]processes still running after the federation stopped: {leftovers}")

    summaries = {
        app: summarize(
            timings, app=app, rounds=args.rounds, baseline_rounds=args.baseline_rounds, hospitals=args.hospitals
        )
        for app in apps
    }
    ratio = {
        key: round(summaries[numerator][key] / summaries[denominator][key], 3)
        for key in ("seconds_per_round", "total_seconds_per_round", "marginal_seconds_per_round")
        if key in summaries["fedcare"]
    }
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
            "compared": f"{numerator} / {denominator}",
        },
        "source": source,
        "apps": summaries,
        "ratio": ratio,
        "goal": {
            "max_ratio": goal_ratio,
            "met": {key: value <= goal_ratio for key, value in ratio.items() if key != "total_seconds_per_round"},
            "max_seconds_per_round": GOAL_SECONDS[numerator],
            "seconds_met": summaries[numerator]["seconds_per_round"] <= GOAL_SECONDS[numerator],
        },
        "runs": [asdict(t) for t in timings],
        "environment": {
            "flwr": version("flwr"),
            "torch": version("torch"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "benchmark_seconds": round(time.time() - started, 1),
        "leftover_processes": leftovers,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = f"round_latency-secagg-{args.hospitals}h" if args.secagg else "round_latency"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    if plot(result, out / f"{stem}.png", pair=(numerator, denominator)):
        console.log(f"plot: {out / f'{stem}.png'}")
    console.log(f"results: {out / f'{stem}.json'}")
    console.log(f"{numerator} / {denominator} per round: {ratio['seconds_per_round']:.2f} (goal <= {goal_ratio})")
    print(json.dumps(result, indent=2))
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
