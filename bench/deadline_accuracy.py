"""What a round deadline costs in accuracy: the slow hospital's share of its work against equal speed, over seeds.

A deadline bounds a round by cutting a slow hospital's local steps; its data is then used less. This benchmark
shows how much that costs, and how much of a difference one seeded run's final accuracy shows by chance.

Setup: `tests/server/test_deadline_rounds.py`'s (the production ServerApp loop and ClientApp handlers on the
loopback grid, `synthetic` data, 3 hospitals, 10 rounds of 2 local epochs at batch 64, DP off so that a run
is seeded). Per seed, one equal-speed run, then per share one run in which hospital-3 is given that share of
its full steps every round (the schedule pinned as the test pins it, so the figures do not follow the
machine's load), averaged as --aggregation says (`deadline-aggregation`, default "fedavg"). The noise arm
gives hospital-3 all its steps but another shuffling seed: how far a final accuracy moves when nothing that
matters changes.

    python bench/deadline_accuracy.py                                  # shares 0.25 0.5 0.75, 8 seeds
    python bench/deadline_accuracy.py --shares 0.75 --seeds 42 7 123   # the test's setting

Prints a Markdown table on stderr and a JSON object on stdout, and writes bench/out/deadline_accuracy-AGGREGATION.json.
`bench/deadline.py` measures the round times on a real federation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/deadline_accuracy.py` from a checkout

import pytest  # noqa: E402
import torch  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import client.local_round  # noqa: E402
from bench.federation_runs import load_average, source_state  # noqa: E402
from common.demo_data import DemoSplit, write_demo_split  # noqa: E402
from common.settings import DeadlineAggregation  # noqa: E402
from fedcare.demo import holdout_accuracy  # noqa: E402
from server.local_work import LocalWorkScheduler  # noqa: E402
from tests.server.loopback import RUN  # noqa: E402
from tests.server.test_deadline_rounds import (  # noqa: E402
    ACCURACY_DEADLINE,
    ACCURACY_ROUNDS,
    SLOW,
    pinned_plan,
    run_loopback,
)

NOISE = "noise"  # the arm at full work with hospital-3 shuffled by another seed
RESHUFFLE = 1000  # added to hospital-3's shuffling seed in the noise arm


def _reshuffled(train_plain: Any) -> Any:
    """`client.local_round.train_plain` with the scheduled hospital's shuffling seed moved (the noise arm)."""

    def train(model: Any, data: Any, *, seed: int, max_steps: int | None = None, **options: Any) -> Any:
        moved = seed + RESHUFFLE if max_steps is not None else seed
        return train_plain(model, data, seed=moved, max_steps=max_steps, **options)

    return train


def one_seed(root: Path, split: DemoSplit, *, seed: int, shares: list[float], aggregation: str) -> dict[str, Any]:
    """Final held-out accuracy at equal speed, and its change per arm, for one seeded federation."""
    config = {**ACCURACY_ROUNDS, "seed": seed}
    equal = run_loopback(root / "equal", split, slowed=False, config=config)
    at_equal = holdout_accuracy(equal, split)
    assert at_equal is not None
    full = equal["rounds"][0]["sites"][f"hospital-{SLOW}"]["full_steps"]
    out: dict[str, Any] = {"seed": seed, "equal": round(at_equal, 4), "full_steps": full, "change": {}}
    for arm in [*map(str, shares), NOISE]:
        with pytest.MonkeyPatch.context() as mp:
            steps = full if arm == NOISE else max(1, round(float(arm) * full))
            mp.setattr(LocalWorkScheduler, "plan", pinned_plan(steps))
            if arm == NOISE:
                mp.setattr(client.local_round, "train_plain", _reshuffled(client.local_round.train_plain))
            scheduled = {**config, "round-deadline": ACCURACY_DEADLINE, "deadline-aggregation": aggregation}
            results = run_loopback(root / f"arm-{arm}", split, slowed=False, config=scheduled)
        accuracy = holdout_accuracy(results, split)
        assert accuracy is not None
        out["change"][arm] = round(100 * (accuracy - at_equal), 2)  # accuracy points
        print(f"seed {seed}, {arm}: {out['change'][arm]:+.2f} points", file=sys.stderr, flush=True)
    return out


def summary(per_seed: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for arm in arms:
        changes = [s["change"][arm] for s in per_seed]
        out[arm] = {
            "mean": round(statistics.fmean(changes), 2),
            "sd": round(statistics.stdev(changes), 2) if len(changes) > 1 else 0.0,
            "worst": min(changes),
            "best": max(changes),
            "within_one_point": sum(abs(c) <= 1 for c in changes),
        }
    return out


def table(stats: dict[str, dict[str, float]], *, seeds: int) -> str:
    lines = [
        f"| hospital-3's share of its steps | mean change, points ({seeds} seeds) | sd | worst | best "
        "| seeds within 1 point |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in stats.items():
        name = "all, reshuffled (noise)" if arm == NOISE else f"{float(arm):.0%}"
        lines.append(
            f"| {name} | {s['mean']:+.2f} | {s['sd']:.2f} | {s['worst']:+.2f} | {s['best']:+.2f} "
            f"| {s['within_one_point']} of {seeds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123, 1, 2, 3, 4, 5])
    parser.add_argument("--aggregation", choices=get_args(DeadlineAggregation), default="fedavg")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    if any(not 0 < s <= 1 for s in args.shares):
        parser.error(f"--shares must be in (0, 1]; got {args.shares}")
    started, load_before = datetime.now(UTC).isoformat(timespec="seconds"), load_average()
    torch.set_num_threads(1)  # as the test: one thread, so a shared machine does not slow steps 10-100x
    with tempfile.TemporaryDirectory(prefix="fedcare-deadline-accuracy-") as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(TaskIdentity, "_task_id", 1)  # the identity a ServerApp process would have
        mp.setattr(TaskIdentity, "_run_id", RUN)
        mp.setattr(TaskIdentity, "_node_id", 0)
        root = Path(tmp)
        split = write_demo_split(root / "data", dataset="synthetic", hospitals=3)
        per_seed = [
            one_seed(root / str(seed), split, seed=seed, shares=args.shares, aggregation=args.aggregation)
            for seed in args.seeds
        ]
    arms = [*map(str, args.shares), NOISE]
    stats = summary(per_seed, arms)
    result = {
        "benchmark": "deadline_accuracy",
        "started": started,
        "source": source_state(),
        "load_before": load_before,
        "load_after": load_average(),
        "setup": {**ACCURACY_ROUNDS, "hospitals": 3, "dataset": "synthetic", "slow_hospital": f"hospital-{SLOW}"},
        "deadline_aggregation": args.aggregation,
        "per_seed": per_seed,
        "summary": stats,
    }
    print(table(stats, seeds=len(args.seeds)), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"deadline_accuracy-{args.aggregation}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
