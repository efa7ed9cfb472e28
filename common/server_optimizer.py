"""Server-side optimizers (FedAvg, FedAvgM, FedAdam): how a round's average becomes the next global model.

The hospitals' averaged weights are treated as one step of a "pseudo-gradient" (Reddi et al., Adaptive
Federated Optimization, 2021): `delta = global - average`. FedAvg takes the average as it is; FedAvgM
(Hsu et al., 2019) and FedAdam add momentum and adaptive scaling on top, as Flower's strategies of the same
names do. All of it is post-processing of the DP-noised updates, so it leaves every hospital's privacy
accounting as it is.

Who runs the step depends on the privacy mode: the ServerApp in plain and SecAgg+ modes (it learns the
average), every hospital in HE mode (only they can decrypt it; `common.he.carried` says where the state
lives then). So this module is plain NumPy with no Flower, TenSEAL or torch in it, and the step is
deterministic: the same inputs give bit-identical outputs at every site.

The state (the moment buffers and the step count) is a small object with `state()` and `restore()`, so a
checkpoint can keep it and a resumed run continues the same trajectory; `restore` validates what it reads
and raises `ValueError` naming what does not fit, as Opacus' `load_state_dict` does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    from common.settings import TrainingSettings

# Declared here once; common/settings.py and pyproject.toml's comment follow it.
ServerOptimizerName = Literal["fedavg", "fedavgm", "fedadam"]
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizerName)

Weights = OrderedDict[str, np.ndarray]


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)


class ServerOptimizer:
    """FedAvg: the new global model is the weighted average itself (McMahan et al.). Base of the others.

    A subclass names its state buffers in `slots` and computes the update direction in `_direction`.
    Integer tensors (counters a model may keep) are never stepped: they take the average as it is.
    """

    name: ClassVar[str] = "fedavg"
    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, learning_rate: float = 1.0, momentum: float = 0.0, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not learning_rate > 0:
            raise ValueError(f"server-learning-rate = {learning_rate}: must be > 0")
        if not 0 <= momentum < 1 or not 0 <= beta2 < 1:
            raise ValueError(f"server-momentum = {momentum}, server-beta2 = {beta2}: each must be in [0, 1)")
        if not tau > 0:
            raise ValueError(f"server-tau = {tau}: must be > 0")
        self.learning_rate, self.momentum, self.beta2, self.tau = learning_rate, momentum, beta2, tau
        self.steps = 0
        self.buffers: dict[str, Weights] = {}

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> ServerOptimizer:
        """The run's optimizer, with fresh state."""
        kind = {c.name: c for c in (ServerOptimizer, FedAvgM, FedAdam)}[settings.server_optimizer]
        return kind(
            learning_rate=settings.server_learning_rate,
            momentum=settings.server_momentum,
            beta2=settings.server_beta2,
            tau=settings.server_tau,
        )

    @property
    def stateful(self) -> bool:
        return bool(self.slots)

    def step(self, *, current: Weights, average: Weights) -> Weights:
        """The next global model from the current one and this round's weighted average of the updates."""
        if not self.slots:
            return OrderedDict(average)
        if list(current) != list(average):
            raise ValueError("the average's tensors differ from the global model's")
        if not self.buffers:
            self.buffers = {
                slot: OrderedDict((k, np.zeros(np.shape(v), dtype=np.float64)) for k, v in current.items())
                for slot in self.slots
            }
        self.steps += 1
        out: Weights = OrderedDict()
        for name, now in current.items():
            avg = np.asarray(average[name])
            if not _is_float(now):
                out[name] = avg.astype(np.asarray(now).dtype)
                continue
            delta = np.asarray(now, dtype=np.float64) - avg.astype(np.float64)  # the pseudo-gradient
            direction = self._direction(name, delta)
            out[name] = (np.asarray(now, dtype=np.float64) - direction).astype(np.asarray(now).dtype)
        return out

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # only stateful optimizers get here

    # ---- state, for checkpoints and for the HE carry ----------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a resumed run needs: the optimizer's name, its step count and its buffers (float64 copies)."""
        return {
            "optimizer": self.name,
            "steps": self.steps,
            "buffers": {s: OrderedDict((k, v.copy()) for k, v in b.items()) for s, b in self.buffers.items()},
        }

    def restore(self, state: dict[str, Any], *, template: Weights | None = None) -> None:
        """Take up `state()`'s output; with `template`, its buffers must match the model's tensors."""
        if state.get("optimizer") != self.name:
            raise ValueError(
                f"optimizer state is for {state.get('optimizer')!r}, this run uses server-optimizer {self.name!r}"
            )
        steps, buffers = state.get("steps"), state.get("buffers") or {}
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"optimizer state: steps must be a non-negative integer, got {steps!r}")
        if steps and set(buffers) != set(self.slots):
            raise ValueError(f"optimizer state: buffers {sorted(buffers)} != {list(self.slots)} for {self.name}")
        for slot, tensors in buffers.items():
            if template is not None and [(k, np.shape(v)) for k, v in tensors.items()] != [
                (k, np.shape(v)) for k, v in template.items()
            ]:
                raise ValueError(f"optimizer state: buffer {slot!r} does not fit the model's tensors or shapes")
        self.steps = steps
        self.buffers = {
            s: OrderedDict((k, np.asarray(v, dtype=np.float64).copy()) for k, v in b.items())
            for s, b in buffers.items()
        }


SETTING_NAMES = ("server_optimizer", "server_learning_rate", "server_momentum", "server_beta2", "server_tau")


def server_optimizer_record(settings: TrainingSettings) -> dict[str, Any]:
    """The run's server optimizer settings as run-config keys, for results.json: enough to rebuild it."""
    return settings.model_dump(include=set(SETTING_NAMES), by_alias=True)


def server_optimizer_from_record(record: dict[str, Any]) -> ServerOptimizer:
    """The optimizer (fresh state) that `server_optimizer_record` describes; FedAvg for an empty record."""
    from common.settings import TrainingSettings  # settings import this module's names

    return ServerOptimizer.from_settings(TrainingSettings.model_validate(record))


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al., 2019; Flower's FedAvgM): m = momentum * m + delta; x -= lr * m.

    With learning rate 1 and momentum 0 it is FedAvg. Momentum averages the hospitals' DP noise over
    rounds, which is why it helps most when each round's average is noisy."""

    name: ClassVar[str] = "fedavgm"
    slots: ClassVar[tuple[str, ...]] = ("momentum",)

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        m = self.buffers["momentum"]
        m[name] = self.momentum * m[name] + delta
        return self.learning_rate * m[name]


class FedAdam(ServerOptimizer):
    """Adam on the pseudo-gradient (Reddi et al., 2021; Flower's FedAdam), with `momentum` as beta1.

    Bias-corrected as in Kingma and Ba (Flower's FedAdam corrects too, counting from round + 1); `tau`
    bounds the step where the second moment is tiny. Both moments stay non-negative where they must:
    in HE mode they come back from CKKS with noise of about 1e-9, so the second moment is clipped at 0."""

    name: ClassVar[str] = "fedadam"
    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        b1, b2, t = self.momentum, self.beta2, self.steps
        m, v = self.buffers["m"], self.buffers["v"]
        m[name] = b1 * m[name] + (1 - b1) * delta
        v[name] = np.maximum(b2 * v[name] + (1 - b2) * delta * delta, 0.0)
        m_hat = m[name] / (1 - b1**t)
        v_hat = v[name] / (1 - b2**t)
        return self.learning_rate * m_hat / (np.sqrt(v_hat) + self.tau)
