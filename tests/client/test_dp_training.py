"""DP-SGD with real Opacus on CPU: the fp16 fix, step planning, skips, empty batches, in-place training."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client import dp_training
from client.dp_training import dp_step, plan_round, resolve_grad_sample_mode, train_private
from client.mixed_precision import DPConfigError, PerSampleLossScaler
from client.training import evaluate
from common.data import HospitalData
from common.models import TabularMLP

CPU = torch.device("cpu")
pytestmark = [
    # Opacus' secure-mode nag (train_private logs its own note once) and torch's benign full-backward-hook note.
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


def _mlp(seed: int = 0) -> TabularMLP:
    torch.manual_seed(seed)
    return TabularMLP(in_features=30, num_classes=2)


def _private_sgd(
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    noise: float = 0.0,
    mode: str = "hooks",
    device: torch.device = CPU,
):
    """A copy of `base` made private with plain SGD(lr=1), so a step's update is exactly the DP gradient."""
    model = copy.deepcopy(base).to(device)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    engine = PrivacyEngine()
    private = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=mode,
    )
    return model, engine, private


def _update(model: nn.Module, base: nn.Module) -> torch.Tensor:
    return torch.cat(
        [(p.detach().cpu() - q.detach()).flatten() for p, q in zip(model.parameters(), base.parameters(), strict=False)]
    )


def _relative_error(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a - reference).norm() / reference.norm())


def _fp16_vs_fp32_grad_error(base: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """How far an fp16-autocast gradient is from fp32 with no DP at all: the error fp16 itself brings."""
    model = copy.deepcopy(base).to(device)
    params = list(model.parameters())
    g32 = torch.autograd.grad(nn.CrossEntropyLoss()(model(x), y), params)
    with torch.autocast(device.type, dtype=torch.float16):
        loss16 = nn.CrossEntropyLoss()(model(x), y)
    g16 = torch.autograd.grad(loss16 * 1024.0, params)
    a = torch.cat([g.flatten() for g in g32])
    b = torch.cat([g.flatten() for g in g16]) / 1024.0
    return _relative_error(b, a)


def _fp16_proof(device: torch.device, data: HospitalData) -> tuple[float, float, float]:
    """(fixed error, naive error, fp16's own error) of one DP step against the fp32 DP step.

    max_grad_norm 10 lies above every per-sample norm here, so the fp32 step clips
    nothing; a step that clips gradients still carrying the loss scale clips all.
    """
    x, y = torch.from_numpy(data.features[:64]).to(device), torch.from_numpy(data.labels[:64]).to(device)
    base = _mlp()
    ref_model, _, (module, optimizer, _) = _private_sgd(base, x, y, max_grad_norm=10.0, device=device)
    assert dp_step(module, optimizer, nn.CrossEntropyLoss(), x, y, amp="off").applied
    reference = _update(ref_model, base)

    fixed_model, _, (module, optimizer, _) = _private_sgd(base, x, y, max_grad_norm=10.0, device=device)
    scaler = PerSampleLossScaler(device.type, init_scale=2.0**10)
    assert dp_step(module, optimizer, nn.CrossEntropyLoss(), x, y, amp="fp16", loss_scaler=scaler).applied
    fixed = _update(fixed_model, base)

    # The naive way: GradScaler as torch documents it, with nothing done about per-sample gradients.
    naive_model, _, (module, optimizer, _) = _private_sgd(base, x, y, max_grad_norm=10.0, device=device)
    naive_scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10)
    optimizer.zero_grad()
    with torch.autocast(device.type, dtype=torch.float16):
        loss = nn.CrossEntropyLoss()(module(x), y)
    naive_scaler.scale(loss).backward()
    naive_scaler.step(optimizer)
    naive_scaler.update()
    naive = _update(naive_model, base)
    naive_error = _relative_error(naive, reference) if torch.isfinite(naive).all() else math.inf
    return _relative_error(fixed, reference), naive_error, _fp16_vs_fp32_grad_error(base, x, y, device)


# ---------------------------------------------------------------- 1. the fp16 proof


def test_fp16_dp_step_matches_fp32_and_the_naive_gradscaler_does_not(breast_cancer: HospitalData) -> None:
    fixed_error, naive_error, fp16_error = _fp16_proof(CPU, breast_cancer)
    # The fixed step is as close to fp32 DP-SGD as an fp16 gradient is to an fp32 one: DP adds no error.
    assert fixed_error < 0.03
    assert fixed_error <= fp16_error * 1.1 + 1e-4
    # The naive step clips still-scaled per-sample gradients: every sample is cut to norm 10, off by far more.
    assert naive_error > 1.0


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; the CPU test above proves the fp16 fix with GradScaler('cpu')",
)
def test_fp16_dp_step_on_cuda(breast_cancer: HospitalData) -> None:
    fixed_error, naive_error, fp16_error = _fp16_proof(torch.device("cuda"), breast_cancer)
    assert fixed_error < 0.03
    assert fixed_error <= fp16_error * 1.1 + 1e-4
    assert naive_error > 1.0


# ---------------------------------------------------------------- 2. bf16 trains


def test_bf16_dp_training_lowers_the_loss(breast_cancer: HospitalData) -> None:
    model = _mlp()
    before = evaluate(model, breast_cancer, device=CPU).loss
    outcome = train_private(
        model,
        breast_cancer,
        batch_size=64,
        epochs=5,
        learning_rate=5e-3,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        amp="bf16",
        device=CPU,
        seed=0,
    )
    after = evaluate(model, breast_cancer, device=CPU).loss
    assert (outcome.amp, outcome.grad_sample_mode, outcome.skipped_steps) == ("bf16", "ghost", 0)
    assert after < 0.7 * before
    assert evaluate(model, breast_cancer, device=CPU).accuracy > 0.85


# ---------------------------------------------------------------- 3. non-finite steps are dropped


def test_a_non_finite_fp16_step_is_skipped_and_changes_nothing(breast_cancer: HospitalData) -> None:
    x, y = torch.from_numpy(breast_cancer.features[:32]), torch.from_numpy(breast_cancer.labels[:32])
    base = _mlp()
    model, engine, (module, optimizer, _) = _private_sgd(base, x, y, max_grad_norm=1.0, noise=1.0)
    scaler = PerSampleLossScaler("cpu", init_scale=2.0**40)  # the scaled fp16 gradients overflow to inf

    result = dp_step(module, optimizer, nn.CrossEntropyLoss(), x, y, amp="fp16", loss_scaler=scaler)

    assert not result.applied
    assert engine.accountant.history == []  # no noise added, nothing released, nothing to account
    assert torch.equal(_update(model, base), torch.zeros_like(_update(model, base)))
    assert scaler.get_scale() == 2.0**39  # backed off by GradScaler's backoff factor
    assert all(p.grad_sample is None and p.grad is None for p in model.parameters())


def test_train_private_counts_skipped_steps_and_leaves_weights_alone(breast_cancer: HospitalData) -> None:
    # Features of 1e5 overflow fp16 activations in the first layer: every step is non-finite.
    overflowing = HospitalData(features=breast_cancer.features[:100] * 1e5, labels=breast_cancer.labels[:100])
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    outcome = train_private(
        model,
        overflowing,
        batch_size=25,
        epochs=2,
        learning_rate=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="fp16",
        device=CPU,
        seed=0,
    )
    _, planned = plan_round(num_examples=100, batch_size=25, epochs=2)
    assert (outcome.steps, outcome.skipped_steps) == (0, planned)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_training_takes_every_planned_step(breast_cancer: HospitalData) -> None:
    outcome = train_private(
        _mlp(),
        breast_cancer,
        batch_size=64,
        epochs=2,
        learning_rate=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="fp16",
        device=CPU,
        seed=0,
    )
    assert (outcome.amp, outcome.grad_sample_mode) == ("fp16", "hooks")
    assert (outcome.steps, outcome.skipped_steps) == (plan_round(num_examples=569, batch_size=64, epochs=2)[1], 0)


# ---------------------------------------------------------------- 4. plan_round is what Opacus does


@pytest.mark.parametrize(("n", "batch", "epochs"), [(100, 32, 2), (64, 64, 1), (186, 2, 1), (569, 64, 2)])
def test_plan_round_matches_the_steps_and_rate_opacus_takes(n: int, batch: int, epochs: int) -> None:
    rng = np.random.default_rng(n)
    data = HospitalData(features=rng.normal(size=(n, 30)).astype(np.float32), labels=rng.integers(0, 2, n))
    sample_rate, steps = plan_round(num_examples=n, batch_size=batch, epochs=epochs)

    outcome = train_private(
        _mlp(),
        data,
        batch_size=batch,
        epochs=epochs,
        learning_rate=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="off",
        device=CPU,
        seed=0,
    )
    assert (outcome.steps, outcome.skipped_steps) == (steps, 0)
    assert outcome.sample_rate == sample_rate  # read back from Opacus' own accountant: exact, not approximate
    assert (
        len(DPDataLoader.from_data_loader(DataLoader(TensorDataset(torch.zeros(n)), batch_size=batch)))
        == steps // epochs
    )


def test_plan_round_knows_opacus_floating_point_step_count() -> None:
    # 186 rows at batch 2 is 93 batches, but Opacus takes int(1 / (1/93)) = 92 steps at rate 1/92.
    assert plan_round(num_examples=186, batch_size=2, epochs=1) == (1 / 92, 92)
    assert plan_round(num_examples=100, batch_size=32, epochs=3) == (0.25, 12)


def test_plan_round_refuses_nonsense() -> None:
    with pytest.raises(DPConfigError, match="batch_size = 0"):
        plan_round(num_examples=10, batch_size=0, epochs=1)


# ---------------------------------------------------------------- empty Poisson batches


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost"])
def test_an_empty_poisson_batch_still_takes_a_noisy_counted_step(mode: str) -> None:
    x, y = torch.randn(8, 30), torch.randint(0, 2, (8,))
    base = _mlp()
    engine = PrivacyEngine()
    model = copy.deepcopy(base)
    private = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        criterion=nn.CrossEntropyLoss(),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode=mode,
    )
    module, optimizer, criterion = private[0], private[1], (private[2] if mode == "ghost" else nn.CrossEntropyLoss())

    result = dp_step(module, optimizer, criterion, x[:0], y[:0], amp="off", ghost=mode == "ghost")

    assert result == dp_training.StepResult(loss=None, applied=True)
    assert engine.accountant.history == [(1.0, 0.5, 1)]  # the accountant counted it like any other step
    assert _update(model, base).abs().max() > 0  # pure noise was added


# ---------------------------------------------------------------- 5. choosing the grad-sample mode


def test_resolve_grad_sample_mode_auto_choices() -> None:
    assert resolve_grad_sample_mode("auto", amp="off") == "ghost"
    assert resolve_grad_sample_mode("auto", amp="bf16") == "ghost"
    assert resolve_grad_sample_mode("auto", amp="fp16") == "hooks"
    for mode in ("hooks", "functorch"):
        for amp in ("off", "bf16", "fp16"):
            assert resolve_grad_sample_mode(mode, amp=amp) == mode


@pytest.mark.parametrize(
    ("mode", "amp", "advice"),
    [
        ("ew", "bf16", 'set amp = "off" to keep ew'),
        ("ew", "fp16", 'set amp = "off" to keep ew'),
        ("ghost", "fp16", 'use amp = "bf16" with ghost, or grad-sample-mode = "hooks" with fp16'),
        ("fast", "off", "choose one of auto, hooks, ew, functorch, ghost"),
    ],
)
def test_invalid_combinations_say_what_to_change(mode: str, amp: str, advice: str) -> None:
    with pytest.raises(DPConfigError) as caught:
        resolve_grad_sample_mode(mode, amp=amp)  # type: ignore[arg-type]
    assert advice in str(caught.value)


def test_train_private_refuses_an_invalid_combination_before_training(breast_cancer: HospitalData) -> None:
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(DPConfigError, match="ew"):
        train_private(
            model,
            breast_cancer,
            batch_size=64,
            epochs=1,
            learning_rate=1e-3,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="ew",
            amp="bf16",
            device=CPU,
            seed=0,
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- 6. the caller's module holds the weights


@pytest.mark.parametrize("mode", ["hooks", "ew", "ghost"])
def test_the_original_module_is_trained_in_place_and_reusable(breast_cancer: HospitalData, mode: str) -> None:
    model = _mlp()
    params_before = list(model.parameters())
    weights_before = copy.deepcopy(model.state_dict())
    kwargs = {
        "batch_size": 64,
        "epochs": 1,
        "learning_rate": 1e-3,
        "noise_multiplier": 0.5,
        "max_grad_norm": 1.0,
        "grad_sample_mode": mode,
        "amp": "off",
        "device": CPU,
        "seed": 0,
    }

    train_private(model, breast_cancer, **kwargs)

    assert list(model.state_dict()) == list(weights_before)  # no "_module." prefix
    assert not any(k.startswith("_module.") for k in model.state_dict())
    assert all(p is q for p, q in zip(model.parameters(), params_before, strict=False))
    assert all(not torch.equal(weights_before[k], v) for k, v in model.state_dict().items())
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in model.parameters())
    train_private(model, breast_cancer, **kwargs)  # Opacus' hooks were removed, so a second round works


def test_the_run_seed_does_not_fix_the_noise(breast_cancer: HospitalData) -> None:
    # The seed comes from the server's config: noise it could regenerate would protect nothing.
    a, b = _mlp(), _mlp()
    for model in (a, b):
        train_private(
            model,
            breast_cancer,
            batch_size=64,
            epochs=1,
            learning_rate=1e-3,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            amp="off",
            device=CPU,
            seed=7,
        )
    assert not torch.equal(a.net[0].weight, b.net[0].weight)


def test_the_missing_csprng_is_logged_once(
    breast_cancer: HospitalData, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dp_training, "_prng_warned", False)
    small = HospitalData(features=breast_cancer.features[:40], labels=breast_cancer.labels[:40])
    with caplog.at_level(logging.WARNING, logger="flwr.fedcare.client"):
        for _ in range(2):
            train_private(
                _mlp(),
                small,
                batch_size=20,
                epochs=1,
                learning_rate=1e-3,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                amp="off",
                device=CPU,
                seed=0,
            )
    notes = [r for r in caplog.records if "not a CSPRNG" in r.getMessage()]
    assert len(notes) == 1 and notes[0].name == "flwr.fedcare.client"


# ---------------------------------------------------------------- 5. a scheduled round records the steps it took


def test_a_scheduled_round_takes_and_records_exactly_its_steps(breast_cancer: HospitalData) -> None:
    """round-deadline: the server's schedule caps the Poisson batches; the plan (what the ledger records), the
    loop and Opacus' own accountant agree on that number, at the epoch's sample rate."""
    full_rate, full = plan_round(num_examples=569, batch_size=64, epochs=2)
    rate, steps = plan_round(num_examples=569, batch_size=64, epochs=2, max_steps=5)
    assert (rate, steps) == (full_rate, 5) and full > 5
    assert plan_round(num_examples=569, batch_size=64, epochs=2, max_steps=10_000)[1] == full  # a cap, not a target
    calls: list[float] = []

    def go_on(seconds: float) -> bool:
        calls.append(seconds)
        return True

    outcome = train_private(
        _mlp(),
        breast_cancer,
        batch_size=64,
        epochs=2,
        learning_rate=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="off",
        device=CPU,
        seed=0,
        max_steps=5,
        after_step=go_on,
    )  # train_private raises when Opacus' accountant counted other than the steps taken
    assert (outcome.steps, outcome.skipped_steps, outcome.sample_rate) == (5, 0, rate)
    assert len(calls) == 5
    with pytest.raises(DPConfigError, match="max_steps = 0"):
        plan_round(num_examples=569, batch_size=64, epochs=2, max_steps=0)


def test_the_loop_stops_when_its_clock_says_so_and_opacus_counted_only_those_steps(breast_cancer: HospitalData) -> None:
    """The deadline guard: `after_step` answering False ends the loop; Opacus' own accountant agrees (train_private
    raises otherwise), so the accountant can be amended to exactly `outcome.steps`."""
    outcome = train_private(
        _mlp(),
        breast_cancer,
        batch_size=64,
        epochs=2,
        learning_rate=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="off",
        device=CPU,
        seed=0,
        after_step=lambda seconds: False,
    )
    assert (outcome.steps, outcome.skipped_steps) == (1, 0)
