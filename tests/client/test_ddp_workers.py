"""DP-SGD across 2 gloo workers on CPU: the single-process run's privacy, a model that trains, no orphans.

The spawning tests are marked slow (about 40 s together on an idle 2-core machine, more under load).

Real processes (spawned), real gloo, real Opacus. One spawn serves several assertions, because each
costs seconds of torch and Opacus imports per worker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from client.ddp_workers import LocalWorkersError, run_workers, train_private_workers
from client.dp_training import plan_round, train_private
from client.mixed_precision import DPConfigError
from client.training import evaluate
from common.data import HospitalData
from common.dp_event import epsilon_of

SIGMA, CLIP = 1.3, 0.7
PROBE_ROWS, PROBE_DIM, PROBE_BATCH = 64, 8000, 16  # q = 1/4, 4 steps per epoch, expected batch 16


def _probe_data() -> HospitalData:
    """Zero features into a bias-free layer: every per-sample gradient is 0, so the update is pure noise."""
    return HospitalData(features=np.zeros((PROBE_ROWS, PROBE_DIM), dtype=np.float32), labels=np.arange(PROBE_ROWS) % 2)


def _noise_seen_by_adam(*, distributed: bool, device: torch.device) -> np.ndarray:
    """Each step's gradient as Adam receives it (after noise, scaling and the all-reduce), times the batch."""
    grads: list[np.ndarray] = []

    def record(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if isinstance(optimizer, torch.optim.Adam):
            grads.append(
                np.concatenate([p.grad.detach().numpy().ravel() for g in optimizer.param_groups for p in g["params"]])
            )

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        train_private(
            nn.Linear(PROBE_DIM, 2, bias=False),
            _probe_data(),
            batch_size=PROBE_BATCH,
            epochs=1,
            learning_rate=0.01,
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
            grad_sample_mode="hooks",
            device=device,
            seed=0,
            distributed=distributed,
        )
    finally:
        handle.remove()
    return np.concatenate(grads) * PROBE_BATCH  # the expected batch over all ranks: 64 * 1/4


def _probe_and_pid(rank: int, job: Any, device: torch.device) -> dict[str, Any]:
    return {"pid": os.getpid(), "noise": _noise_seen_by_adam(distributed=True, device=device)}


def _crash_on_rank_1(rank: int, job: Any, device: torch.device) -> int:
    import torch.distributed as dist

    if rank == 1:
        raise ValueError("rank 1 gives up")
    dist.barrier()  # rank 0 would wait here for ever: the parent must kill it
    return os.getpid()


@pytest.fixture(scope="module")
def ddp_probe() -> dict[int, dict[str, Any]]:
    return run_workers(_probe_and_pid, None, workers=2, backend="gloo", timeout_s=120)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_noise_is_added_once_with_the_single_process_std(ddp_probe: dict[int, dict[str, Any]]) -> None:
    single = _noise_seen_by_adam(distributed=False, device=torch.device("cpu"))
    two = ddp_probe[0]["noise"]
    # Every rank steps with the same (all-reduced) gradient: one noise draw, shared.
    np.testing.assert_array_equal(two, ddp_probe[1]["noise"])
    assert two.shape == single.shape == (4 * 2 * PROBE_DIM,)
    # 64,000 Gaussian coordinates: the std estimate's relative error is ~0.3%, so 3% is 10 sigma, while
    # noise added on both ranks would read sqrt(2) = 41% high and noise divided by 2 would read 50% low.
    for std in (float(single.std()), float(two.std())):
        assert std == pytest.approx(SIGMA * CLIP, rel=0.03)
    assert float(two.std()) / float(single.std()) == pytest.approx(1.0, rel=0.03)
    assert not np.allclose(two[:100], single[:100])  # fresh draws, not a replayed seed


@pytest.mark.slow
def test_workers_are_gone_after_the_round(ddp_probe: dict[int, dict[str, Any]]) -> None:
    pids = [ddp_probe[r]["pid"] for r in (0, 1)]
    assert len(set(pids) | {os.getpid()}) == 3
    assert all(_gone(pid) for pid in pids)


@pytest.mark.slow
def test_two_workers_train_with_the_single_process_epsilon(breast_cancer: HospitalData) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))
    before = evaluate(model, breast_cancer, device=torch.device("cpu")).loss
    options = {"batch_size": 32, "epochs": 2, "learning_rate": 0.01, "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    outcome = train_private_workers(
        model, breast_cancer, workers=2, device=torch.device("cpu"), timeout_s=120, seed=0, **options
    )
    after = evaluate(model, breast_cancer, device=torch.device("cpu")).loss
    assert after < 0.8 * before

    sample_rate, steps = plan_round(num_examples=len(breast_cancer), batch_size=32, epochs=2)
    assert (outcome.sample_rate, outcome.steps, outcome.grad_sample_mode) == (sample_rate, steps, "hooks")
    single = train_private(
        nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2)),
        breast_cancer,
        device=torch.device("cpu"),
        seed=0,
        **options,
    )
    assert (single.sample_rate, single.steps) == (outcome.sample_rate, outcome.steps)

    def eps(o: Any) -> float:
        return epsilon_of([(o.noise_multiplier, o.sample_rate, o.steps)], accountant="rdp", delta=1e-5)

    assert eps(outcome) == eps(single)


@pytest.mark.slow
def test_a_crashed_worker_takes_the_round_and_the_other_workers_down() -> None:
    started = time.monotonic()
    with pytest.raises(LocalWorkersError, match="local worker 1 failed: ValueError: rank 1 gives up"):
        run_workers(_crash_on_rank_1, None, workers=2, backend="gloo", timeout_s=120)
    assert time.monotonic() - started < 120  # not the collective's timeout: rank 0 was killed
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_the_root_cause_is_reported_even_when_a_peer_s_lost_connection_arrives_first() -> None:
    """Which rank's reply reaches the queue first is a race; the message must name the rank that raised."""
    from client.ddp_workers import WorkerReply, _root_cause

    lost = WorkerReply(rank=0, ok=False, value="[pair.cc:553] Connection closed by peer [127.0.0.1]:1", error_type="X")
    cause = WorkerReply(rank=1, ok=False, value="rank 1 gives up", error_type="ValueError")
    assert _root_cause([lost, cause]) is cause
    assert _root_cause([cause, lost]) is cause
    assert _root_cause([lost]) is lost  # nothing better known: say what there is


def test_modes_that_cannot_run_distributed_are_refused_before_spawning() -> None:
    from client.dp_training import resolve_distributed_mode

    assert resolve_distributed_mode("auto", amp="off") == "hooks"
    with pytest.raises(DPConfigError, match="ghost"):
        resolve_distributed_mode("ghost", amp="bf16")
    with pytest.raises(DPConfigError, match="fp16"):
        resolve_distributed_mode("hooks", amp="fp16")
