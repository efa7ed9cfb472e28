"""The hospital side of SecAgg+: Flower's `secaggplus_mod` around fedcare's local round.

Flower's SecAgg+ speaks the legacy FitIns/FitRes layout in four train messages per round;
this module is the only client code that knows it. Three stages are key exchange only, done
by the mod without touching torch (a fresh ClientApp process runs per message, so heavy
imports stay inside the one stage that trains). In the masked-vectors stage the mod calls
`_train_masked`, which runs the same `client.train_reply.train_round` as plain mode (scoring,
DP-SGD, the accountant committed before training) and hands the mod a FitRes; the mod masks the
weighted, quantized update and clears every array record before the reply leaves, so
only fedcare's metrics, status and DP event travel in clear next to the masked vector.

A hospital that refuses the round still answers, with weight 0 and zeros: the masked sum
is unchanged, no mask needs recovering, and the server learns why (and the epsilon spent).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from common.institution import institution_name

log = logging.getLogger("flwr.fedcare.client")


def is_secagg_stage(msg: Message) -> bool:
    """A train message of Flower's SecAgg+ workflow (any of its four stages)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def handle_stage(msg: Message, context: Context) -> Message:
    reply = secaggplus_mod(msg, context, _train_masked)
    if not reply.has_error() and "status" not in reply.content:
        # Key-exchange stages say who answers too, so a hospital that drops out later is named.
        institution = institution_name(context.node_config.get("institution"), node_id=context.node_id)
        reply.content["status"] = ConfigRecord({"ok": True, "institution": institution})
    return reply


def weighted_overflow(
    weights: dict[str, np.ndarray],
    *,
    num_examples: int,
    max_weight: float,
    clipping_range: float,
    quantization_range: int,
) -> int:
    """How many values SecAgg+ would clip: the mod scales the update by its (quantized) weight
    num_examples / max_weight and clips to +-clipping_range, silently corrupting the sum."""
    factor = round(num_examples / max_weight * quantization_range) / quantization_range
    return int(sum(np.count_nonzero(np.abs(w.astype(np.float64) * factor) > clipping_range) for w in weights.values()))


def _legacy_reply(weights: dict[str, np.ndarray], *, num_examples: int) -> RecordDict:
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(weights.values())), num_examples, {})
    return fitres_to_recorddict(fitres, keep_input=False)


def _zeros_like_incoming(msg: Message) -> OrderedDict[str, np.ndarray]:
    arrays = msg.content.get("arrays")
    if not isinstance(arrays, ArrayRecord):
        raise ValueError("SecAgg+ masked-vectors stage without a global model: cannot even answer with weight 0")
    return OrderedDict((k, np.zeros_like(v.numpy())) for k, v in arrays.items())


def _train_masked(msg: Message, context: Context) -> Message:
    from client.local_round import LocalRound, RoundRefused  # torch and Opacus: only this stage needs them
    from client.train_reply import refusal, train_round
    from common.codecs import to_numpy, to_record

    secagg = context.state.config_records[RECORD_KEY_STATE]  # the mod's state, saved by the setup stage
    max_weight, clipping_range = float(secagg["max_weight"]), float(secagg["clipping_range"])

    def check_weight(local: LocalRound) -> None:
        if local.train_examples > max_weight:
            raise RoundRefused(
                code="secagg-weight-too-large",
                reason=f"this hospital has {local.train_examples} training examples, above the run's max-weight "
                f"{max_weight:g}; its weighted update would be clipped. Raise max-weight",
                institution=local.institution,
            )

    try:
        trained = train_round(msg, context, before_training=check_weight)
    except RoundRefused as exc:
        return refusal(msg, exc, content=_legacy_reply(_zeros_like_incoming(msg), num_examples=0))
    local = trained.local
    weights = to_numpy(to_record(local.model.state_dict()))
    clipped = weighted_overflow(
        weights,
        num_examples=local.train_examples,
        max_weight=max_weight,
        clipping_range=clipping_range,
        quantization_range=int(secagg["target_range"]),
    )
    if clipped:
        exc = RoundRefused(
            code="secagg-clipping",
            reason=f"{clipped} weighted update value(s) exceed clipping-range {clipping_range:g}; "
            "SecAgg+ would clip them and corrupt the sum. Raise clipping-range (or max-weight)",
            institution=local.institution,
        )
        return trained.refuse(msg, exc, content=_legacy_reply(_zeros_like_incoming(msg), num_examples=0))
    log.info(
        "[%s] round %d: update handed to SecAgg+ for masking (%d examples)",
        local.institution,
        local.config.server_round,
        local.train_examples,
    )
    return trained.reply(msg, _legacy_reply(weights, num_examples=local.train_examples))
