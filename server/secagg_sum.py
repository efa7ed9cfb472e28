"""The masked-vectors stage's replies, checked before any mask is removed, and what the server makes of their sum.

A reply whose masked update is inside the sum cannot be taken out again, so any doubt about it fails the round
with the reason instead of aggregating something wrong. With `round-deadline` and a FedNova `deadline-aggregation`
the hospitals mask their per-step models (common/fednova_sum.py) and the server, which sees the unmasked average in
clear, finishes FedNova.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from common.codecs import InvalidUpdate
from common.fednova_sum import effective_steps, from_per_step_average
from server.replies import RejectedPayload, SortedReplies, fednova_steps, sort_replies
from server.secagg_quantization import quantized_weight

# Rejections whose update is inside the masked sum (a refusal carries weight 0 and zeros, and leaves it alone).
IN_SUM = ("invalid-update", "no-status", "no-work-report")


@dataclass
class MaskedReplies:
    """Checks the masked-vectors stage's replies before any mask is removed (`CheckReplies`)."""

    per_site: bool
    # round-deadline with FedNova: the sum is of per-step models, taken from `base`, the global model as the
    # hospitals received it (int8: dequantized), so the server finishes FedNova from the very model they trained
    # from. None: the sum is the plain average (no deadline, or deadline-aggregation "fedavg").
    base: OrderedDict[str, np.ndarray] | None = None
    replies: SortedReplies = field(default_factory=SortedReplies)
    counts: list[int] = field(default_factory=list)  # example counts of the updates in the sum
    steps: list[int] = field(default_factory=list)  # their local steps (FedNova; 0 otherwise)
    resent_of: tuple[str, int] | None = None  # the final scoring: (run id, round) of the DP events it resends

    def __call__(self, masked: list[Message]) -> str | None:
        def accept(msg: Message, who: str, n: int) -> None:
            weight = msg.content.metric_records.get("fitres.num_examples")
            if weight is None or int(weight["num_examples"]) != n:
                raise RejectedPayload("invalid-update", f"its SecAgg+ weight {weight} differs from num-examples {n}")
            self.steps.append(fednova_steps(msg) if self.base is not None else 0)
            self.counts.append(n)

        self.replies = sort_replies(
            masked, reference=None, expect_update=True, accept=accept, per_site=self.per_site, resent_of=self.resent_of
        )
        # An invalid reply's masked update is inside the sum, and SecAgg+ cannot take it out again; so is one
        # without the local steps FedNova divides by (round-deadline): the round fails rather than mis-weigh it.
        in_sum = [r for r in self.replies.rejections if r.code in IN_SUM]
        if in_sum:
            return (
                "the masked sum includes update(s) whose reply is invalid, and SecAgg+ cannot take them out: "
                + "; ".join(f"{r.institution}: {r.reason}" for r in in_sum)
            )
        if not self.replies.participants:
            return "no hospital contributed an update (every one refused or failed)"
        return None

    def fednova(
        self, average: list[np.ndarray], *, max_weight: float, quantization_range: int
    ) -> tuple[list[np.ndarray], float]:
        """The FedNova model (in the model's tensor order and dtypes) from the unmasked average of per-step models,
        and τ_eff. τ_eff is weighed as the sum was, by the mod's quantized weights, so that equal steps give
        exactly the FedAvg average SecAgg+ computes without a deadline. Raises InvalidUpdate."""
        assert self.base is not None  # only with round-deadline and a FedNova deadline-aggregation
        weights = [
            quantized_weight(n, max_weight=max_weight, quantization_range=quantization_range) for n in self.counts
        ]
        tau = effective_steps(list(zip(weights, self.steps, strict=True)))
        if len(average) != len(self.base):
            raise InvalidUpdate(f"{len(average)} tensors, the model has {len(self.base)}")
        try:
            named = dict(zip(self.base, average, strict=True))
            return list(from_per_step_average(named, base=self.base, effective_steps=tau).values()), tau
        except ValueError as exc:  # a tensor that does not reshape to the model's
            raise InvalidUpdate(str(exc)) from exc
