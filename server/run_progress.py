"""Where the ServerApp's run stands, kept so that a crashed coordinator can go on (docs/resume.md).

A run starts fresh, or, submitted by `fedcare run resume` with `fedcare-run-id`, from its last
checkpoint: the privacy mode's state, results.json's content and the budget outbox come back, and
the rounds go on from the one after the last round accounted for. After every round the loop calls
`accounted`, which writes results.json and the checkpoint (`server.checkpoint`).

One ServerApp at a time works in a run directory: it holds an exclusive lock on it while it runs
(released by the OS when the process dies), so a resumed run never writes beside a coordinator that
is still alive.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from server.budget_gate import BudgetGate
from server.checkpoint import RUN_CONFIG_FILE, Checkpoint, CheckpointError, read_checkpoint, write_checkpoint
from server.results import RunResults
from server.rounds import Rounds

log = logging.getLogger("flwr.fedcare.server")


class RunDirBusy(RuntimeError):
    """Another ServerApp still works in the run directory."""


@dataclass
class RunDirLock:
    """An exclusive flock on the run directory itself (no lock file among the run's outputs)."""

    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_run_dir(run_dir: Path, *, timeout: float = 60.0) -> RunDirLock:
    """Hold `run_dir`'s lock (close it when the run ends; the OS releases it if the process dies); waits up to
    `timeout` seconds for a ServerApp that is still going down (its SuperLink crashed) to let go."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return RunDirLock(fd)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RunDirBusy(
                    f"another ServerApp still works in {run_dir} after {timeout:.0f} s; stop its run "
                    "(`flwr stop RUN_ID`) or its process, then resume again"
                ) from None
            time.sleep(0.5)


@dataclass
class RunProgress:
    run_dir: Path
    run_id: int  # the fedcare run id
    rounds: Rounds
    results: RunResults
    gate: BudgetGate | None
    next_round: int = 1
    scored_round: int = 0
    model_path: Path | None = None

    @classmethod
    def start(
        cls,
        *,
        run_dir: Path,
        run_id: int,
        flower_run_id: int,
        run_config: dict[str, Any],
        resuming: bool,
        rounds: Rounds,
        results: RunResults,
        gate: BudgetGate | None,
    ) -> RunProgress:
        """A fresh run (its run config and a round-0 checkpoint written), or a resumed one (its checkpoint read)."""
        progress = cls(run_dir, run_id, rounds, results, gate)
        if not resuming:
            write_json_atomic(run_dir / RUN_CONFIG_FILE, dict(run_config))
            progress.accounted(0, scored_round=0, model_path=None)
            return progress
        checkpoint = read_checkpoint(run_dir)
        if checkpoint is None:
            raise CheckpointError(f"run {run_id}: {run_dir} holds no checkpoint to resume from; submit the run again")
        if checkpoint.run_id != str(run_id):
            raise CheckpointError(f"{run_dir}'s checkpoint is of run {checkpoint.run_id}, not {run_id}")
        rounds.restore(checkpoint.rounds)
        progress.results = RunResults.from_payload(results.path, checkpoint.results)
        progress.next_round = checkpoint.completed_round + 1
        progress.scored_round = checkpoint.scored_round
        progress.model_path = Path(checkpoint.model_path) if checkpoint.model_path else None
        progress.results.record_resume(from_round=progress.next_round, flower_run_id=flower_run_id)
        if gate is not None:
            gate.node_institutions.update({int(k): str(v) for k, v in checkpoint.gate.items()})
            put_back = gate.keep_pending(checkpoint.outbox)
            if put_back:
                log.warning("run %d: %d DP event(s) from the checkpoint put back in the outbox", run_id, put_back)
        progress.results.save()
        log.warning(
            "run %d resumed from round %d (Flower run %d); rounds 1-%d were accounted for before the crash",
            *(run_id, progress.next_round, flower_run_id, checkpoint.completed_round),
        )
        return progress

    def accounted(self, server_round: int, *, scored_round: int, model_path: Path | None) -> None:
        """Round `server_round` is aggregated or failed, and recorded: save results.json, then the checkpoint."""
        self.scored_round, self.model_path = scored_round, model_path
        self.results.save()
        write_checkpoint(
            self.run_dir,
            Checkpoint(
                run_id=str(self.run_id),
                completed_round=server_round,
                scored_round=scored_round,
                model_path=str(model_path) if model_path else None,
                rounds=self.rounds.state(),
                results=json.loads(json.dumps(self.results.payload())),
                outbox=self.gate.pending_events() if self.gate is not None else [],
                gate={str(k): v for k, v in self.gate.node_institutions.items()} if self.gate is not None else {},
            ),
        )
