"""DP-SGD for one hospital's round across `local-workers` processes (Opacus' distributed DP).

The ClientApp's process (a fresh child of the warm executor for each message) spawns N workers with
`torch.multiprocessing`'s spawn context (never fork: torch and gloo state must not be copied), each
joins a fresh process group on a free loopback port (gloo on CPU, NCCL on GPU), trains with
`train_private(distributed=True)`, and rank 0 sends the weights back. What keeps the privacy the
single-process run's:

* sampling: one Poisson sample of the whole table at the same rate, split by fixed shards
  (`client.ddp_sampling`), for the same number of steps (`plan_round`);
* noise: Opacus' `DistributedDPOptimizer` adds the Gaussian noise on rank 0 only, then the clipped sums
  are all-reduced, so the summed gradient carries std `noise_multiplier * max_grad_norm` once, not N times;
* accounting: the caller (`client.local_round`) commits one DP event for the round before this runs;
  the workers' own Opacus accountants are only checked against the steps taken.

Each worker seeds its sampler and noise from fresh OS entropy (`secrets`) in its own process. Workers
die with the message: a watchdog thread ends a worker whose parent is gone (the executor killed the
message on its timeout), and the parent kills every worker when one crashes or the deadline passes.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import nn

from client.mixed_precision import DPConfigError
from client.training import TrainingOutcome
from common.data import HospitalData

__all__ = ["LocalWorkersError", "run_workers", "train_private_workers"]

from client.local_workers_error import LocalWorkersError

FAILURE_GRACE_S = 5.0  # how long the parent waits for the other ranks' errors once one rank has failed
PEER_LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")
WORKER_START_S = 120.0  # spawn, import torch and Opacus, join the group: generous on a loaded machine
# The workers' own limit (the process group's collective timeout, and the parent's wait beyond the start).
# The executor's message timeout comes first in practice; the workers follow their parent out (watchdog).
WORKER_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class GroupSpec:
    world_size: int
    port: int
    backend: str  # "gloo" (CPU) or "nccl" (GPU)
    parent_pid: int
    timeout_s: float
    threads: int  # the parent's torch threads (the warm executor sets 1 per ClientApp), shared out


@dataclass(frozen=True)
class WorkerReply:
    rank: int
    ok: bool
    value: Any = None  # rank 0's result; an error's message otherwise
    error_type: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(70)  # orphaned: the message was killed (timeout) or crashed; stop training for nobody

    threading.Thread(target=watch, name="fedcare-parent-watch", daemon=True).start()


def worker_device(rank: int, backend: str) -> torch.device:
    if backend == "nccl":
        index = rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _bootstrap(rank: int, spec: GroupSpec, target: Callable[..., Any], job: Any, replies: Any) -> None:
    """One worker's life: join the group, run ``target(rank, job, device)``, report, leave."""
    import torch.distributed as dist

    _die_with_parent(spec.parent_pid)
    if spec.backend == "gloo":  # share the cores instead of each rank taking all of them
        torch.set_num_threads(max(1, spec.threads // spec.world_size))
    try:
        device = worker_device(rank, spec.backend)
        dist.init_process_group(
            spec.backend,
            init_method=f"tcp://127.0.0.1:{spec.port}",
            rank=rank,
            world_size=spec.world_size,
            timeout=timedelta(seconds=spec.timeout_s),
        )
        try:
            value = target(rank, job, device)
        finally:
            dist.destroy_process_group()
        replies.put(WorkerReply(rank=rank, ok=True, value=value))
    except BaseException as exc:  # reported to the parent, which raises it as a typed error
        replies.put(WorkerReply(rank=rank, ok=False, value=str(exc), error_type=type(exc).__name__))


def run_workers(
    target: Callable[..., Any], job: Any, *, workers: int, backend: str, timeout_s: float
) -> dict[int, Any]:
    """Run ``target`` on ``workers`` spawned ranks; every rank's return value, by rank.

    The workers are always gone when this returns or raises (terminated, then killed).
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    replies = ctx.Queue()
    spec = GroupSpec(
        world_size=workers,
        port=free_loopback_port(),
        backend=backend,
        parent_pid=os.getpid(),
        timeout_s=timeout_s,
        threads=torch.get_num_threads(),
    )
    procs = [ctx.Process(target=_bootstrap, args=(r, spec, target, job, replies), daemon=True) for r in range(workers)]
    deadline = time.monotonic() + timeout_s + WORKER_START_S
    results: dict[int, Any] = {}
    try:
        for p in procs:
            p.start()
        while len(results) < workers:
            try:
                reply: WorkerReply = replies.get(timeout=0.5)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise LocalWorkersError(
                        f"local worker {dead[0][0]} of {workers} died (exit code {dead[0][1]}) before reporting; "
                        "the round is abandoned"
                    ) from None
                if time.monotonic() > deadline:
                    raise LocalWorkersError(
                        f"the {workers} local workers did not finish within {timeout_s + WORKER_START_S:.0f} s"
                    ) from None
                continue
            if not reply.ok:
                cause = _root_cause([reply, *_more_failures(replies, procs, reported=len(results) + 1)])
                if cause.error_type == "DPConfigError":
                    raise DPConfigError(cause.value)
                raise LocalWorkersError(f"local worker {cause.rank} failed: {cause.error_type}: {cause.value}")
            results[reply.rank] = reply.value
        return results
    finally:
        _stop(procs)
        replies.close()


def _more_failures(replies: Any, procs: list[Any], *, reported: int) -> list[WorkerReply]:
    """The other ranks' failures that arrive within a short grace after the first one.

    A rank that raises leaves the process group, so its peers fail in their next collective with gloo's
    "Connection closed by peer"; whichever reply reaches the queue first is a race, hence the wait.
    """
    failures: list[WorkerReply] = []
    deadline = time.monotonic() + FAILURE_GRACE_S
    while reported < len(procs) and time.monotonic() < deadline:
        try:
            reply: WorkerReply = replies.get(timeout=0.2)
        except queue.Empty:
            if all(p.exitcode is not None for p in procs):
                break
            continue
        reported += 1
        if not reply.ok:
            failures.append(reply)
    return failures


def _root_cause(failures: list[WorkerReply]) -> WorkerReply:
    """The failure that started it: the first one that is not a peer's lost connection."""
    own = [f for f in failures if not any(marker in f.value for marker in PEER_LOST_MARKERS)]
    return (own or failures)[0]


def _stop(procs: list[Any]) -> None:
    procs = [p for p in procs if p.pid is not None]  # started ones only
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


@dataclass(frozen=True)
class TrainJob:
    model: nn.Module  # CPU; rank 0's weights are broadcast to the others by DPDDP
    data: HospitalData
    options: dict[str, Any]  # train_private's keyword options, less device and distributed


def _train_rank(rank: int, job: TrainJob, device: torch.device) -> tuple[dict[str, np.ndarray], TrainingOutcome]:
    import torch.distributed as dist

    from client.dp_training import train_private

    outcome = train_private(job.model, job.data, device=device, distributed=True, **job.options)
    losses: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(losses, outcome.loss)
    finite = [x for x in losses if x == x]
    loss = float(np.mean(finite)) if finite else float("nan")
    weights = {k: v.detach().cpu().numpy() for k, v in job.model.state_dict().items()} if rank == 0 else {}
    return weights, TrainingOutcome(**{**outcome.__dict__, "loss": loss})


def train_private_workers(
    model: nn.Module, data: HospitalData, *, workers: int, device: torch.device, timeout_s: float, **options: Any
) -> TrainingOutcome:
    """`train_private` across ``workers`` processes, training ``model`` in place (rank 0's result)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    job = TrainJob(model=model.cpu(), data=data, options=options)
    results = run_workers(_train_rank, job, workers=workers, backend=backend, timeout_s=timeout_s)
    weights, outcome = results[0]
    if any(results[r][1].steps != outcome.steps for r in results):
        raise LocalWorkersError(f"local workers took unequal step counts: {[results[r][1].steps for r in results]}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.to(device)
    return outcome
