"""Sorting hospital replies into usable updates and rejections, each with a reason.

A reply is rejected, never fatal: the round goes on with the other hospitals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message

from common.codecs import InvalidUpdate, check_update, to_numpy
from server.fedavg import ClientUpdate


@dataclass(frozen=True)
class Rejection:
    institution: str
    node_id: int
    code: str
    reason: str


@dataclass
class SortedReplies:
    updates: list[ClientUpdate] = field(default_factory=list)
    scores: list[tuple[str, float, float, int]] = field(default_factory=list)  # institution, loss, accuracy, n
    train_losses: list[tuple[float, int]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _institution(msg: Message) -> str:
    if not msg.has_error() and "status" in msg.content:
        return str(msg.content["status"].get("institution", f"node-{msg.metadata.src_node_id}"))
    return f"node-{msg.metadata.src_node_id}"


def sort_replies(
    replies: Iterable[Message], *, reference: dict[str, np.ndarray] | None, expect_update: bool
) -> SortedReplies:
    """Validate each reply; `reference` is the global model the updates must match."""
    out = SortedReplies()
    for msg in replies:
        node_id, who = msg.metadata.src_node_id, _institution(msg)
        if msg.has_error():
            out.rejections.append(Rejection(who, node_id, "node-error", msg.error.reason or f"error code {msg.error.code}"))
            continue
        status = msg.content.get("status")
        if status is None or not bool(status.get("ok", False)):
            code = str(status.get("code", "refused")) if status else "no-status"
            reason = str(status.get("reason", "")) if status else "reply carries no status record"
            out.rejections.append(Rejection(who, node_id, code, reason))
            continue
        try:
            metrics = msg.content["metrics"]
            if "eval-examples" in metrics and int(metrics["eval-examples"]) > 0:
                out.scores.append(
                    (who, float(metrics["eval-loss"]), float(metrics["eval-accuracy"]), int(metrics["eval-examples"]))
                )
            if expect_update:
                assert reference is not None
                arrays = msg.content.get("arrays")
                if not isinstance(arrays, ArrayRecord):
                    raise InvalidUpdate("reply has no model weights")
                weights = to_numpy(arrays)
                check_update(weights, reference=reference)
                n = int(metrics["num-examples"])
                if n <= 0:
                    raise InvalidUpdate(f"num-examples is {n}; it must be positive")
                loss = float(metrics["train-loss"])
                if np.isfinite(loss):
                    out.train_losses.append((loss, n))
                out.updates.append(ClientUpdate(who, node_id, weights, n))
        except (InvalidUpdate, KeyError, TypeError, ValueError) as exc:
            out.rejections.append(Rejection(who, node_id, "invalid-update", str(exc)))
    return out
