"""The chaos soak: N real federations of 3 hospitals (DP on, the budget service on), each with one fault.

Modes alternate HE, SecAgg+ and plain; each trial's fault (bench/chaos_faults.py: SIGKILL of a SuperNode, a
ClientApp, the ServerApp, the SuperLink or the budget service; a hospital sending NaN updates; the budget
service down for the whole run) strikes at a moment drawn from `--seed`. After each trial the invariants of
bench/chaos_checks.py are checked; any broken one is a violation, reported with its details.

    python bench/chaos.py --trials 7 --seed 16      # --share: one federation for all trials (faster)
    python bench/chaos.py --trials 40 --share --fault kill-clientapp --mode plain --after-round 1 --max-delay 0.3

Prints a JSON object (trials, faults by kind, violations, seconds per trial, median time to resume, the load
average) and writes it to bench/out/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/chaos.py` from a checkout

from bench.chaos_app import chaos_app  # noqa: E402
from bench.chaos_bed import ChaosBed  # noqa: E402
from bench.chaos_checks import Violation, leftover_violations, trial_violations  # noqa: E402
from bench.chaos_faults import FAULTS, MODES, ROUNDS, Trial, TrialRun, run_trial, schedule  # noqa: E402
from common.demo_data import write_demo_split  # noqa: E402


def soak(
    trials: list[Trial],
    *,
    workdir: Path,
    share: bool = False,
    bed: ChaosBed | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `trials` (one bed each, or one bed for all with `share`) and check every invariant; `progress` gets
    the report so far after every trial (a soak cut short still says what it saw). On a `bed` the caller
    started (the tests share one), every trial runs there, and what the bed leaves behind is the caller's to
    check once it stopped it."""
    app_dir = chaos_app(workdir / "app")
    violations: list[Violation] = []
    runs: list[TrialRun] = []
    seconds: list[float] = []
    groups = [trials] if share or bed is not None else [[t] for t in trials]
    split = None if bed is not None else write_demo_split(workdir / "data", dataset="breast-cancer", hospitals=3)
    for number, group in enumerate(groups):
        with ExitStack() as stack:
            started = time.monotonic()
            current = bed or stack.enter_context(ChaosBed(workdir / f"bed-{number}", split))  # type: ignore[arg-type]
            for trial in group:
                print(f"trial {trial.index}: {trial.mode}, {trial.fault}", file=sys.stderr, flush=True)
                try:
                    run = run_trial(current, trial, app_dir=app_dir)
                    violations += trial_violations(current, run, outbox_left=current.drain_outbox())
                except Exception as exc:  # a trial that breaks is a violation too, and the soak goes on
                    run = TrialRun(trial, notes=[f"{type(exc).__name__}: {exc}"[:2000]])
                    violations.append(
                        {"trial": trial.index, "fault": trial.fault, "invariant": "trial ran", "error": run.notes[0]}
                    )
                runs.append(run)
                seconds.append(round(time.monotonic() - started, 1))
                started = time.monotonic()
                if progress is not None:
                    progress(_report(runs, violations, seconds))
        if bed is None:
            violations += leftover_violations(current, [t.index for t in group])
    return _report(runs, violations, seconds)


def _report(runs: list[TrialRun], violations: list[Violation], seconds: list[float]) -> dict[str, Any]:
    resumes = [r.resume_seconds for r in runs if r.resume_seconds is not None]
    return {
        "trials": len(runs),
        "faults": dict(Counter(r.trial.fault for r in runs if r.injected)),
        "faults_not_injected": dict(Counter(r.trial.fault for r in runs if not r.injected)),
        "violations": violations,
        "seconds_per_trial": seconds,
        "median_seconds_to_resume": statistics.median(resumes) if resumes else None,
        "runs": [r.summary() for r in runs],
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=len(FAULTS))
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--share", action="store_true", help="one federation for every trial")
    parser.add_argument("--fault", action="append", choices=FAULTS, help="only these faults (repeat for more)")
    parser.add_argument("--mode", action="append", choices=MODES, help="only these modes (repeat for more)")
    parser.add_argument("--after-round", type=int, choices=range(1, ROUNDS), help="strike after this round only")
    parser.add_argument("--max-delay", type=float, default=1.5, help="s after the round, at most (drawn)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "chaos.json")
    args = parser.parse_args()
    print(f"seed {args.seed}", file=sys.stderr, flush=True)
    load_before = [round(x, 1) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict[str, Any], *, done: bool = False) -> dict[str, Any]:
        report = {"seed": args.seed, "share": args.share, "done": done, **report, "load_average_before": load_before}
        args.out.write_text(json.dumps(report, indent=2))
        return report

    trials = schedule(
        seed=args.seed,
        trials=args.trials,
        faults=tuple(args.fault or FAULTS),
        modes=tuple(args.mode or MODES),
        after_rounds=(args.after_round, args.after_round) if args.after_round else (1, ROUNDS - 1),
        max_delay=args.max_delay,
    )
    with tempfile.TemporaryDirectory(prefix="fedcare-chaos-") as tmp:
        report = write(soak(trials, workdir=Path(tmp), share=args.share, progress=write), done=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
