"""Hospitals of unequal speed: round time and final accuracy with one hospital 4x slower, scheduled or not.

A real federation (SuperLink and 3 SuperNodes as processes, TLS, gRPC on loopback), breast cancer (MLP),
DP on (each hospital targets epsilon 3 for the run), plain mode, with more local work than the defaults
(--local-epochs 10, --batch-size 8: about 120-190 DP steps per hospital and round) so that training, not
Flower's fixed per-message costs, is what a slow hospital lengthens. Three runs, side by side:

* equal:        three hospitals of equal speed, round-deadline 0 (no scheduling, FedAvg);
* unscheduled:  hospital-3 4x slower (node config `test-slowdown = 4`), round-deadline 0;
* scheduled:    hospital-3 4x slower, round-deadline D (scheduling, FedNova, the guard), where D is
                --deadline seconds, or by default --deadline-factor (1.25) x the slowest hospital's median round
                in the equal run: a deadline an equal-speed federation meets on this machine now.

Per run: the server's round time (`round_seconds` in results.json, push to last reply), each hospital's own
round time and steps, the final model's accuracy on held-out rows no hospital holds, and the load average.
DP noise comes from OS entropy, so the accuracies of single runs differ by chance too (see --repeats).

    python bench/deadline.py                    # --rounds 4 --local-epochs 10 --repeats 3

Prints a JSON object, writes bench/out/deadline.json (deadline-no-dp.json) and a Markdown table on stderr.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/deadline.py` from a checkout

import torch  # noqa: E402

from client.training import evaluate  # noqa: E402
from common.data import load_hospital_table  # noqa: E402
from common.demo_data import DemoSplit, write_demo_split  # noqa: E402
from common.models import build_model  # noqa: E402
from common.schema import load_schema  # noqa: E402
from fedcare.federation import LocalFederation  # noqa: E402

SLOW = "hospital-3"


def _accuracy(results: dict[str, Any], split: DemoSplit) -> float:
    schema = load_schema(split.schema_path)
    model = build_model(schema)
    model.load_state_dict(torch.load(results["final_model_path"], weights_only=True))
    return evaluate(model, load_hospital_table(split.holdout_path, schema), device=torch.device("cpu")).accuracy


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
        "accuracy": _accuracy(results, split),
        "sites": per_site,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def one_federation(
    root: Path, split: DemoSplit, *, slowdown: float, runs: list[tuple[str, float]], base: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Start 3 hospitals (hospital-3 slowed by `slowdown`) and submit each (name, round-deadline) run in turn."""
    out = {}
    with LocalFederation(root / "fed") as fed:
        fed.start_superlink()
        for i, path in enumerate(split.hospital_paths, start=1):
            extra = {"test-slowdown": slowdown} if f"hospital-{i}" == SLOW and slowdown > 1 else {}
            fed.add_hospital(
                institution=f"hospital-{i}",
                data_path=path,
                node_config={"state-dir": str(root / f"state-{i}"), **extra},
            )
        for name, deadline in runs:
            load = os.getloadavg()
            run_id = fed.submit(app_dir=REPO, run_config={**base, "round-deadline": deadline})
            status = fed.wait_finished(run_id, timeout=1800.0)
            results = json.loads((Path(base["results-dir"]) / str(run_id) / "results.json").read_text())
            if status != "finished:completed":
                raise RuntimeError(f"{name}: run {run_id} ended {status}: {results.get('error')}")
            out[name] = _summary(results, split, load)
            print(
                f"{name}: accuracy {out[name]['accuracy']:.4f}, rounds {out[name]['round_seconds']} s "
                f"(load {load[0]:.1f})",
                file=sys.stderr,
            )
    return out


def _across(repeats: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per run kind, over the repeats: accuracy mean and sd, server round time (rounds 2+), the slow site's."""
    out = {}
    for name in repeats[0]:
        runs = [r[name] for r in repeats]
        acc = [r["accuracy"] for r in runs]
        out[name] = {
            "accuracy_mean": round(statistics.mean(acc), 4),
            "accuracy_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else None,
            "round_seconds_after_first_mean": round(
                statistics.mean(r["mean_round_seconds_after_first"] for r in runs), 2
            ),
            "slow_site_round_seconds_mean": round(
                statistics.mean(s for r in runs for s in r["sites"][SLOW]["round_seconds"]), 2
            ),
            "slow_site_steps_share": round(
                statistics.mean(
                    sum(r["sites"][SLOW]["local_steps"]) / (len(r["round_seconds"]) * r["sites"][SLOW]["full_steps"])
                    for r in runs
                ),
                3,
            ),
        }
    return out


def _deadline_from(equal: dict[str, Any], *, factor: float) -> float:
    """`factor` x the slowest hospital's median own round time in the equal-speed run."""
    return round(factor * max(statistics.median(site["round_seconds"]) for site in equal["sites"].values()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="0: deadline-factor x the equal run's slowest median round"
    )
    parser.add_argument("--deadline-factor", type=float, default=1.25)
    parser.add_argument("--slowdown", type=float, default=4.0)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-dp", dest="dp", action="store_false", help="DP off: local training is seeded, so runs differ by schedule"
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": f"real federation (TLS, 3 SuperNodes), breast cancer MLP, "
        f"{'DP on (target epsilon 3)' if args.dp else 'DP off'}, plain mode, "
        f"{args.rounds} rounds, {args.local_epochs} local epochs, batch {args.batch_size}; {SLOW} "
        f"{args.slowdown:g}x slower in 'unscheduled' and 'scheduled'; round-deadline in 'scheduled': "
        + (
            f"{args.deadline:g} s"
            if args.deadline
            else f"{args.deadline_factor:g} x the equal run's slowest median hospital round"
        ),
        "repeats": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        split = write_demo_split(Path(tmp) / "data", dataset="breast-cancer", hospitals=3)
        for i in range(args.repeats):
            root = Path(tmp) / f"r{i}"
            base = {
                "num-rounds": args.rounds,
                "local-epochs": args.local_epochs,
                "batch-size": args.batch_size,
                "schema-path": str(split.schema_path),
                "results-dir": str(root / "runs"),
                "min-nodes": 3,
                "dp": args.dp,
            }
            runs = one_federation(root / "equal", split, slowdown=1.0, runs=[("equal", 0.0)], base=base)
            deadline = args.deadline or _deadline_from(runs["equal"], factor=args.deadline_factor)
            print(f"round-deadline for 'scheduled': {deadline} s", file=sys.stderr)
            runs |= one_federation(
                root / "slow",
                split,
                slowdown=args.slowdown,
                runs=[("unscheduled", 0.0), ("scheduled", deadline)],
                base=base,
            )
            runs["scheduled"]["round_deadline"] = deadline
            report["repeats"].append(runs)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["summary"] = _across(report["repeats"])
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"deadline{'' if args.dp else '-no-dp'}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("| run | mean round s (rounds 2+) | slow site's round s | slow site's steps | accuracy |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for runs in report["repeats"]:
        for name, r in runs.items():
            slow = r["sites"][SLOW]
            print(
                f"| {name} | {r['mean_round_seconds_after_first']} | {slow['round_seconds']} | {slow['local_steps']} "
                f"of {slow['full_steps']} | {r['accuracy']:.4f} |",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
