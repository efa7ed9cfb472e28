"""The image task's small ResNet: GroupNorm only, DP-compatible as built, and small enough for HE and SecAgg+."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from common.models import parameter_count
from common.schema import IMAGE_TASK, DatasetSchema, ImageSpec
from common.tasks.images.model import SmallResNet
from common.tasks.model_task import build_task_model, pin_task


def _schema(width: int = 16, channels: int = 1) -> DatasetSchema:
    spec = ImageSpec(
        classes=list("abc"), size=(16, 16), channels=channels, mean=[0.5] * channels, std=[0.5] * channels, width=width
    )
    return DatasetSchema(label="c", num_classes=3, task_module=IMAGE_TASK, model="resnet", image=spec)


@pytest.mark.parametrize("channels", [1, 3])
def test_one_logit_per_class_for_any_image_size(channels: int) -> None:
    model = build_task_model(_schema(channels=channels))
    assert model(torch.randn(2, channels, 16, 16)).shape == (2, 3)
    assert model(torch.randn(2, channels, 28, 20)).shape == (2, 3)  # adaptive pooling: the size is the schema's choice


def test_groupnorm_only_and_opacus_accepts_it_unchanged() -> None:
    model = SmallResNet(channels=1, num_classes=3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []


def test_the_parameter_count_stays_small_enough_for_he_and_secagg() -> None:
    # 3x3 convolutions without bias, GroupNorm affine pairs, 1x1 shortcuts, the linear head.
    w = 16
    stem = 9 * w + 2 * w
    block1 = 2 * 9 * w * w + 4 * w
    block2 = 9 * w * 2 * w + 9 * 4 * w * w + w * 2 * w + 3 * 2 * 2 * w
    block3 = 9 * 2 * w * 4 * w + 9 * 16 * w * w + 2 * w * 4 * w + 3 * 2 * 4 * w
    head = 4 * w * 16 * 3 + 3  # the 4x4 grid the head pools to
    assert parameter_count(SmallResNet(channels=1, num_classes=3, width=w)) == stem + block1 + block2 + block3 + head
    assert parameter_count(SmallResNet(channels=1, num_classes=3, width=16)) < 82_000
    assert parameter_count(SmallResNet(channels=1, num_classes=10, width=8)) < 25_000  # the demo's width


def test_the_same_seed_gives_the_same_initial_global_model() -> None:
    (_, a), (_, b) = pin_task(_schema(), seed=5), pin_task(_schema(), seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_resnet_trains_under_real_dp_sgd_in_the_automatic_grad_sample_mode() -> None:
    import numpy as np

    from client.dp_training import train_private
    from common.data import HospitalData

    model = build_task_model(_schema(width=4), seed=0)
    rng = np.random.default_rng(0)
    data = HospitalData(rng.normal(size=(24, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 24).astype(np.int64))
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_private(
        model,
        data,
        batch_size=8,
        epochs=1,
        learning_rate=0.01,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        amp="off",
        device=torch.device("cpu"),
        seed=0,
    )
    assert outcome.steps >= 1 and outcome.grad_sample_mode == "ghost"
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Per-sample gradients of small convolutions gain nothing from a second thread, and on a loaded
    2-core machine the OpenMP pool's waiting made this test 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_dp_sgd_teaches_the_resnet_digits_at_a_noise_that_left_global_pooling_at_chance() -> None:
    """The defect the grid head fixes: with global average pooling, DP-SGD at the noise of the demo's epsilon 3
    kept the ResNet near chance on digits at 16x16 (0.13-0.22 held-out in this very setting, 0.09-0.16 at
    width 8), while the grid head reached 0.45-0.57 (0.58-0.69). The noise comes from OS entropy: a wide margin."""
    import numpy as np
    from sklearn.datasets import load_digits

    from client.dp_training import train_private
    from client.training import evaluate
    from common.data import HospitalData

    digits = load_digits()
    pixels = torch.from_numpy(((digits.images / 16.0 - 0.3) / 0.4).astype(np.float32)[:, None])
    images = nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear").numpy()  # the demo's size
    labels = digits.target.astype(np.int64)
    train, held_out = HospitalData(images[:384], labels[:384]), HospitalData(images[1500:], labels[1500:])
    torch.manual_seed(0)
    model = SmallResNet(channels=1, num_classes=10, width=4)
    train_private(
        model,
        train,
        batch_size=64,
        epochs=3,
        learning_rate=0.02,
        noise_multiplier=1.5,
        max_grad_norm=1.0,
        amp="off",
        device=torch.device("cpu"),
        seed=0,
    )
    assert evaluate(model, held_out, device=torch.device("cpu")).accuracy >= 0.33  # chance: 0.1
