"""The hospital side of SecAgg+: Flower's `secaggplus_mod` around fedcare's local round.

Flower's SecAgg+ speaks the legacy FitIns/FitRes layout in four train messages per round;
this module is the only client code that knows it. Three stages are key exchange only, done
by the mod without touching torch (a fresh ClientApp process runs per message, so heavy
imports stay inside the one stage that trains). In the masked-vectors stage the mod calls
`_train_masked`, which runs the same `client.train_reply.train_round` as plain mode (scoring,
DP-SGD, the accountant committed before training) and hands the mod a FitRes; the mod masks the
weighted, quantized update and clears every array record before the reply leaves, so
only fedcare's status, training-example count and DP event (and per-site metrics, when the run
asks for them) travel in clear next to the masked vector.

The masked vector always ends with one more array: the hospital's metrics per training example
(`common.site_metrics`; zeros with per-site metrics), so the server unmasks the federation's totals
with the model. A message carrying the `score-only` record (the final scoring in aggregate mode)
scores the model and masks zeros for the model and the scores: no training, no spending; like the
final scoring of the other modes, it resends the run's DP events (common.dp_event.EARLIER_RECORD).

A hospital that refuses the round still answers, with weight 0 and zeros: the masked sum
is unchanged, no mask needs recovering, and the server learns why (and the epsilon spent).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from common.institution import institution_name
from common.site_metrics import SCORE_ONLY_RECORD, SLOTS, SiteMetrics

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
    factor = _weight_factor(num_examples, max_weight=max_weight, quantization_range=quantization_range)
    return int(sum(np.count_nonzero(np.abs(w.astype(np.float64) * factor) > clipping_range) for w in weights.values()))


def _legacy_reply(
    weights: dict[str, np.ndarray], *, num_examples: int, metrics: np.ndarray | None = None
) -> RecordDict:
    """The FitRes the mod masks: the model's tensors, then the metrics array (zeros when there are none)."""
    last = np.zeros(len(SLOTS), np.float64) if metrics is None else metrics
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([*weights.values(), last]), num_examples, {})
    return fitres_to_recorddict(fitres, keep_input=False)


def _weight_factor(num_examples: int, *, max_weight: float, quantization_range: int) -> float:
    """The weight the mod multiplies this hospital's vector by (quantized as the mod does)."""
    return round(num_examples / max_weight * quantization_range) / quantization_range


def _zeros_like_incoming(msg: Message) -> OrderedDict[str, np.ndarray]:
    """Zeros shaped like the global model: from its per-tensor float32 arrays, or (flat float32 and int8, which
    carry no shapes) from the model the round config's schema names."""
    from common.int8_wire import FLAT_RECORD, FLOAT_RECORD, INT8_RECORD

    arrays = msg.content.get(FLOAT_RECORD)
    if isinstance(arrays, ArrayRecord):
        return OrderedDict((k, np.zeros_like(v.numpy())) for k, v in arrays.items())
    if FLAT_RECORD in msg.content or INT8_RECORD in msg.content:
        from common.codecs import to_numpy, to_record
        from common.round_config import RoundConfig
        from common.tasks.model_task import build_task_model

        config = RoundConfig.from_config(msg.content.get("config") or {})  # SettingsError is a ValueError
        template = to_numpy(to_record(build_task_model(config.dataset_schema).state_dict()))
        return OrderedDict((k, np.zeros_like(v)) for k, v in template.items())
    raise ValueError("SecAgg+ masked-vectors stage without a global model: cannot even answer with weight 0")


def _train_masked(msg: Message, context: Context) -> Message:
    from client.local_round import LocalRound, RoundRefused  # torch and Opacus: only this stage needs them
    from client.metrics_report import masked_metrics, site_metrics
    from client.train_reply import put_earlier_events, refusal, train_round
    from common.codecs import to_numpy, to_record
    from common.fednova_sum import per_step_model

    secagg = context.state.config_records[RECORD_KEY_STATE]  # the mod's state, saved by the setup stage
    max_weight, clipping_range = float(secagg["max_weight"]), float(secagg["clipping_range"])
    quantization_range = int(secagg["target_range"])

    def metrics_of(local: LocalRound, site: SiteMetrics | None) -> np.ndarray | None:
        if site is None:
            return None
        factor = _weight_factor(local.train_examples, max_weight=max_weight, quantization_range=quantization_range)
        return masked_metrics(
            site,
            num_examples=local.train_examples,
            limit=clipping_range / max(factor, 1.0 / quantization_range),
            institution=local.institution,
        )

    def check_weight(local: LocalRound) -> None:
        if local.train_examples > max_weight:
            raise RoundRefused(
                code="secagg-weight-too-large",
                reason=f"this hospital has {local.train_examples} training examples, above the run's max-weight "
                f"{max_weight:g}; its weighted update would be clipped. Raise max-weight",
                institution=local.institution,
            )

    if SCORE_ONLY_RECORD in msg.content:
        try:
            local = LocalRound.from_message(msg, context)
            check_weight(local)
            scores = metrics_of(local, site_metrics(local, local.score()))
        except RoundRefused as exc:
            return refusal(msg, exc, content=_legacy_reply(_zeros_like_incoming(msg), num_examples=0))
        content = _legacy_reply(_zeros_like_incoming(msg), num_examples=local.train_examples, metrics=scores)
        content["metrics"] = MetricRecord({"num-examples": local.train_examples})
        content["status"] = ConfigRecord(local.ok_status())
        put_earlier_events(content, local, before_round=local.config.server_round)  # as client/app.py's evaluate
        return Message(content, reply_to=msg)
    try:
        trained = train_round(msg, context, before_training=check_weight)
    except RoundRefused as exc:
        return refusal(msg, exc, content=_legacy_reply(_zeros_like_incoming(msg), num_examples=0))
    local = trained.local
    weights = to_numpy(to_record(local.model.state_dict()))
    try:
        steps = trained.fednova_steps  # round-deadline with FedNova: a sum of per-step models (common/fednova_sum.py)
    except RoundRefused as exc:
        return trained.refuse(msg, exc, content=_legacy_reply(_zeros_like_incoming(msg), num_examples=0))
    if steps is not None:
        assert local.global_weights is not None  # set by LocalRound.from_message
        weights = per_step_model(weights, base=local.global_weights, local_steps=steps)
    clipped = weighted_overflow(
        weights,
        num_examples=local.train_examples,
        max_weight=max_weight,
        clipping_range=clipping_range,
        quantization_range=quantization_range,
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
    metrics = metrics_of(local, trained.site)
    return trained.reply(msg, _legacy_reply(weights, num_examples=local.train_examples, metrics=metrics))
