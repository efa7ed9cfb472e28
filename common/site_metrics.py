"""A hospital's metrics as sums the federation can add up, and the federation-level figures they give.

With `metrics = "aggregate"` (the default in HE and SecAgg+ modes) no hospital's loss or accuracy
leaves it in clear: a site's accuracy can reveal its label mix. Each hospital turns its figures into
sums (loss summed over its validation rows, correct predictions, rows; the same for training), and
those travel inside the aggregate the mode already computes, so the server only ever learns totals:

- The vector is sent *per training example* (divided by the hospital's training count `n`) and
  weighted by `n`, exactly like the model update. The aggregate is then sum(vector) / sum(n), and every
  figure is a ratio of two of its slots (loss = loss sum / rows), so the common divisor cancels. One
  trick serves both modes: HE adds `n * (vector / n)` under encryption, and SecAgg+ averages it with the
  weights it already uses for the model.
- The federation figures are example-weighted means of the hospitals' own figures, exactly what
  plain mode computes from per-site values.

The slots are declared here once; the hospital builds them, the server reads them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# The record a hospital's reply carries with the federation-level figures it decrypted (HE mode).
FEDERATION_RECORD = "federation-metrics"
# A record in a SecAgg+ round's message: score the model and mask the scores, do not train (final scoring).
SCORE_ONLY_RECORD = "score-only"
SLOTS = ("eval-loss-sum", "eval-correct", "eval-examples", "train-loss-sum", "train-examples")
# The metrics vector as a one-tensor "model", so HE's wire format, checks and layout id apply unchanged.
TEMPLATE: OrderedDict[str, np.ndarray] = OrderedDict({"fedcare.site-metrics": np.zeros(len(SLOTS), np.float64)})


@dataclass(frozen=True)
class SiteMetrics:
    """One hospital's metrics for one message, as sums. Never sent in clear in aggregate mode."""

    eval_loss_sum: float
    eval_correct: float
    eval_examples: float
    train_loss_sum: float = 0.0
    train_examples: float = 0.0

    @classmethod
    def of(
        cls,
        *,
        eval_loss: float,
        eval_accuracy: float,
        eval_examples: int,
        train_loss: float | None = None,
        train_examples: int = 0,
    ) -> SiteMetrics:
        """From the mean figures a hospital computes. A non-finite training loss (every fp16 step skipped)
        adds nothing, as in plain mode; a non-finite validation loss is an error (raises ValueError)."""
        if not (math.isfinite(eval_loss) and eval_loss >= 0 and 0.0 <= eval_accuracy <= 1.0):
            raise ValueError(f"scores out of range (loss {eval_loss}, accuracy {eval_accuracy})")
        trained = train_loss is not None and math.isfinite(train_loss) and train_examples > 0
        return cls(
            eval_loss_sum=eval_loss * eval_examples,
            eval_correct=round(eval_accuracy * eval_examples),
            eval_examples=float(eval_examples),
            train_loss_sum=float(train_loss) * train_examples if trained else 0.0,  # type: ignore[arg-type]
            train_examples=float(train_examples) if trained else 0.0,
        )

    def vector(self) -> np.ndarray:
        return np.array(
            [self.eval_loss_sum, self.eval_correct, self.eval_examples, self.train_loss_sum, self.train_examples],
            dtype=np.float64,
        )

    def per_example(self, num_examples: int) -> np.ndarray:
        """The vector divided by the hospital's training count, the weight the aggregate multiplies it by."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        return self.vector() / float(num_examples)

    def as_tensor(self, num_examples: int) -> OrderedDict[str, np.ndarray]:
        """`per_example` shaped like TEMPLATE, for HE's `encrypt_update` (which multiplies by the count)."""
        return OrderedDict({name: self.per_example(num_examples) for name in TEMPLATE})


@dataclass(frozen=True)
class FederationFigures:
    """Federation-level figures of one message round: the example-weighted means over the hospitals.

    `server_round` is the round of the message whose replies were summed: its validation figures score
    the global model the hospitals received then, its training loss is of that round's local training.
    """

    server_round: int
    loss: float | None = None
    accuracy: float | None = None
    train_loss: float | None = None

    @classmethod
    def from_aggregate(cls, aggregate: np.ndarray, *, server_round: int) -> FederationFigures:
        """From the aggregate of the hospitals' `per_example` vectors (any common divisor cancels)."""
        values = dict(zip(SLOTS, (float(v) for v in np.asarray(aggregate, dtype=np.float64).ravel()), strict=True))

        def ratio(numerator: str, denominator: str, *, at_most: float | None = None) -> float | None:
            den = values[denominator]
            if not (math.isfinite(den) and den > 1e-9):
                return None
            r = max(0.0, values[numerator] / den)
            return min(r, at_most) if at_most is not None else r

        return cls(
            server_round=server_round,
            loss=ratio("eval-loss-sum", "eval-examples"),
            accuracy=ratio("eval-correct", "eval-examples", at_most=1.0),
            train_loss=ratio("train-loss-sum", "train-examples"),
        )

    def as_record(self) -> dict[str, Any]:
        """Flower ConfigRecord values (no None: an unknown figure is left out)."""
        figures = {"loss": self.loss, "accuracy": self.accuracy, "train-loss": self.train_loss}
        return {"round": self.server_round, **{k: v for k, v in figures.items() if v is not None}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> FederationFigures:
        """Raises ValueError for figures that cannot be right (negative, non-finite, accuracy above 1)."""
        figures: dict[str, float | None] = {}
        for key, name in (("loss", "loss"), ("accuracy", "accuracy"), ("train-loss", "train_loss")):
            value = record.get(key)
            if value is not None:
                value = float(value)
                if not (math.isfinite(value) and value >= 0 and (name != "accuracy" or value <= 1.0)):
                    raise ValueError(f"federation figure {key} = {value} is out of range")
            figures[name] = value
        return cls(server_round=int(record["round"]), **figures)
