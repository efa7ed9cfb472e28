"""Hospitals of unequal speed: round time and final accuracy with one hospital 4x slower, scheduled or not.

A real federation (SuperLink and 3 SuperNodes as processes, TLS, gRPC on loopback), an MLP, DP on (each
hospital targets epsilon 3 for the run), plain mode, with more local work than the defaults so that training,
not Flower's fixed per-message costs, is what a slow hospital lengthens. Three arms:

* equal:        three hospitals of equal speed, round-deadline 0 (no scheduling, FedAvg);
* unscheduled:  hospital-3 4x slower (node config `test-slowdown = 4`), round-deadline 0;
* scheduled:    hospital-3 4x slower, round-deadline D (scheduling, --aggregation, the guard), where D is
                --deadline seconds, or by default --deadline-factor (1.25) x the slowest hospital's median round
                in the first equal run: a deadline an equal-speed federation meets on this machine now.

Two federations stay up for the whole benchmark (one of equal hospitals, one with hospital-3 slowed), and each
repeat runs the three arms one after the other, in a rotated order, so that the machine's load falls on every
arm alike. Per run: the server's round time (`round_seconds` in results.json, push to last reply), each
hospital's own round time and steps, the final model's accuracy on held-out rows no hospital holds, and the
load average. DP noise comes from OS entropy, so single runs differ by chance too: hence the repeats, and
`--dataset synthetic` (common/demo_data.py: 2,400 held-out rows, one row 0.04 points) where breast cancer's
113 held-out rows make one row 0.9 points.

    python bench/deadline.py                    # breast cancer, --rounds 4 --local-epochs 10 --repeats 3
    python bench/deadline.py --dataset synthetic --local-epochs 2 --batch-size 32 --repeats 4

Prints a JSON object, writes bench/out/deadline[-DATASET][-no-dp].json and Markdown tables on stderr.
With --no-dp, local training is seeded by the run config, so accuracy differs between the runs by the
schedule (and the server's aggregation) alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/deadline.py` from a checkout

from common.demo_data import DemoSplit, write_demo_split  # noqa: E402
from common.settings import DeadlineAggregation, RunSettings  # noqa: E402
from fedcare.demo import holdout_accuracy  # noqa: E402
from fedcare.federation import LocalFederation  # noqa: E402

SLOW = "hospital-3"
ARMS = ("equal", "unscheduled", "scheduled")


def _summary(results: dict[str, Any], split: DemoSplit, load: tuple[float, ...]) -> dict[str, Any]:
    rounds = results["rounds"]
    per_site = {
        name: {
            "round_seconds": [e["sites"][name]["round_seconds"] for e in rounds],
            "local_steps": [e["sites"][name]["local_steps"] for e in rounds],
            "full_steps": rounds[0]["sites"][name]["full_steps"],
            "epsilon": rounds[-1]["epsilon"][name],  # cumulative over the runs these hospitals took part in
        }
        for name in sorted(rounds[0]["sites"])
    }
    return {
        "status": results["status"],
        "round_seconds": [e["round_seconds"] for e in rounds],
        "mean_round_seconds": round(statistics.mean(e["round_seconds"] for e in rounds), 2),
        "mean_round_seconds_after_first": round(statistics.mean(e["round_seconds"] for e in rounds[1:]), 2),
        "accuracy": holdout_accuracy(results, split),
        "sites": per_site,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def start_federation(stack: ExitStack, root: Path, split: DemoSplit, *, slowdown: float) -> LocalFederation:
    """3 hospitals (hospital-3 slowed by `slowdown`), up until `stack` closes. Each hospital's epsilon limit is
    lifted: its accountant is shared by every run of the benchmark, and the runs are not what is limited."""
    fed = stack.enter_context(LocalFederation(root / "fed"))
    fed.start_superlink()
    procs = []
    for i, path in enumerate(split.hospital_paths, start=1):
        extra = {"test-slowdown": slowdown} if f"hospital-{i}" == SLOW and slowdown > 1 else {}
        config = {"state-dir": str(root / f"state-{i}"), "epsilon-limit": 1e6, **extra}
        procs.append(fed.add_hospital(institution=f"hospital-{i}", data_path=path, node_config=config, wait=False))
    fed.wait_for_nodes(procs)
    return fed


def one_run(fed: LocalFederation, name: str, split: DemoSplit, *, base: dict[str, Any], deadline: float) -> dict:
    load = os.getloadavg()
    run_id = fed.submit(app_dir=REPO, run_config={**base, "round-deadline": deadline})
    status = fed.wait_finished(run_id, timeout=1800.0)
    results = json.loads((Path(base["results-dir"]) / str(run_id) / "results.json").read_text())
    if status != "finished:completed":
        raise RuntimeError(f"{name}: run {run_id} ended {status}: {results.get('error')}")
    out = _summary(results, split, load) | {"round_deadline": deadline}
    print(
        f"{name}: accuracy {out['accuracy']:.4f}, rounds {out['round_seconds']} s, {SLOW} steps "
        f"{out['sites'][SLOW]['local_steps']} of {out['sites'][SLOW]['full_steps']} (load {load[0]:.1f})",
        file=sys.stderr,
    )
    return out


def _mean_sd(values: list[float], digits: int) -> dict[str, float | None]:
    return {
        "mean": round(statistics.mean(values), digits),
        "sd": round(statistics.stdev(values), digits) if len(values) > 1 else None,
    }


def _across(repeats: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per arm, over the repeats: accuracy, server round time (rounds 2+), the slow site's round and steps, load."""
    out = {}
    for name in ARMS:
        runs = [r[name] for r in repeats]
        out[name] = {
            "accuracy": _mean_sd([r["accuracy"] for r in runs], 4),
            "round_seconds_after_first": _mean_sd([r["mean_round_seconds_after_first"] for r in runs], 2),
            "slow_site_round_seconds": _mean_sd([s for r in runs for s in r["sites"][SLOW]["round_seconds"]], 2),
            "slow_site_round_seconds_max": max(s for r in runs for s in r["sites"][SLOW]["round_seconds"]),
            "slow_site_steps_share": round(
                statistics.mean(
                    sum(r["sites"][SLOW]["local_steps"]) / (len(r["round_seconds"]) * r["sites"][SLOW]["full_steps"])
                    for r in runs
                ),
                3,
            ),
            "load_before": [round(r["load_average_before"][0], 1) for r in runs],
        }
    return out


def _deadline_from(equal: dict[str, Any], *, factor: float) -> float:
    """`factor` x the slowest hospital's median own round time in the equal-speed run."""
    return round(factor * max(statistics.median(site["round_seconds"]) for site in equal["sites"].values()), 1)


def _print_tables(report: dict[str, Any]) -> None:
    def pm(cell: dict[str, Any], fmt: str) -> str:
        return f"{cell['mean']:{fmt}} ± {cell['sd']:{fmt}}" if cell["sd"] is not None else f"{cell['mean']:{fmt}}"

    lines = [
        "| arm | accuracy (mean ± sd) | server round s, rounds 2+ (mean ± sd) | slow site's round s (mean ± sd, max) "
        "| slow site's steps | 1-min load before each run |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        lines.append(
            f"| {name} | {pm(s['accuracy'], '.4f')} | {pm(s['round_seconds_after_first'], '.2f')} "
            f"| {pm(s['slow_site_round_seconds'], '.2f')}, {s['slow_site_round_seconds_max']:.2f} "
            f"| {100 * s['slow_site_steps_share']:.1f}% | {', '.join(map(str, s['load_before']))} |"
        )
    lines += ["", "| repeat | arm | server round s | slow site's round s | slow site's steps | accuracy |"]
    lines.append("|---|---|---|---|---|---|")
    for i, runs in enumerate(report["repeats"], start=1):
        for name in ARMS:
            r, slow = runs[name], runs[name]["sites"][SLOW]
            lines.append(
                f"| {i} | {name} | {r['round_seconds']} | {slow['round_seconds']} | {slow['local_steps']} of "
                f"{slow['full_steps']} | {r['accuracy']:.4f} |"
            )
    print("\n".join(lines), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["breast-cancer", "synthetic"], default="breast-cancer")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="0: deadline-factor x the first equal run's slowest median round"
    )
    parser.add_argument("--deadline-factor", type=float, default=1.25)
    parser.add_argument("--slowdown", type=float, default=4.0)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--aggregation",
        choices=get_args(DeadlineAggregation),
        default=RunSettings.model_fields["deadline_aggregation"].default,
        help="deadline-aggregation of the 'scheduled' arm (the run config's default unless given)",
    )
    parser.add_argument(
        "--no-dp", dest="dp", action="store_false", help="DP off: local training is seeded, so runs differ by schedule"
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": f"real federation (TLS, 3 SuperNodes), {args.dataset} MLP, "
        f"{'DP on (target epsilon 3)' if args.dp else 'DP off'}, plain mode, "
        f"{args.rounds} rounds, {args.local_epochs} local epochs, batch {args.batch_size}; {SLOW} "
        f"{args.slowdown:g}x slower in 'unscheduled' and 'scheduled' ({args.aggregation}); round-deadline in "
        "'scheduled': "
        + (
            f"{args.deadline:g} s"
            if args.deadline
            else f"{args.deadline_factor:g} x the first equal run's slowest median hospital round"
        ),
        "repeats": [],
    }
    deadline = args.deadline
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.dataset == "breast-cancer" else f"-{args.dataset}") + ("" if args.dp else "-no-dp")
    out_path = out / f"deadline{suffix}.json"
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        split = write_demo_split(Path(tmp) / "data", dataset=args.dataset, hospitals=3)
        feds = {
            "equal": start_federation(stack, Path(tmp) / "equal", split, slowdown=1.0),
            "slow": start_federation(stack, Path(tmp) / "slow", split, slowdown=args.slowdown),
        }
        print(f"federations up (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        for i in range(args.repeats):
            base = {
                "num-rounds": args.rounds,
                "local-epochs": args.local_epochs,
                "batch-size": args.batch_size,
                "schema-path": str(split.schema_path),
                "results-dir": str(Path(tmp) / "runs"),
                "min-nodes": 3,
                "dp": args.dp,
                "deadline-aggregation": args.aggregation,
            }
            runs: dict[str, dict[str, Any]] = {}
            for name in ARMS[i % 3 :] + ARMS[: i % 3]:  # rotated: the load falls on every arm alike
                if name == "scheduled" and not deadline:  # the first repeat starts with its equal run
                    deadline = _deadline_from(runs["equal"], factor=args.deadline_factor)
                    print(f"round-deadline for 'scheduled': {deadline} s", file=sys.stderr)
                fed = feds["equal" if name == "equal" else "slow"]
                runs[name] = one_run(fed, name, split, base=base, deadline=deadline if name == "scheduled" else 0.0)
            report["repeats"].append({name: runs[name] for name in ARMS})
            report["round_deadline"] = deadline
            report["summary"] = _across(report["repeats"])
            out_path.write_text(json.dumps(report, indent=2))  # after every repeat: a stopped run keeps its data
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    out_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    _print_tables(report)


if __name__ == "__main__":
    main()
