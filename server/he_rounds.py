"""HE mode: the global model stays encrypted on the server, which only adds ciphertexts.

Round 1 sends the seeded initial model in plaintext (random weights, nothing learnt from anyone).
From then on the server holds and forwards only the encrypted sum of the last aggregated round
and the total sample count; each hospital decrypts and divides. The server's context carries no
secret key, so the server cannot read an update, the sum, or the final model. With `round-deadline` the
hospitals encrypt per-step models and the server writes FedNova's τ_eff, computed from the clear sample
counts and local steps, into the sum's header; the hospitals finish the step after decrypting (docs/compute.md).

Metrics (aggregate mode, the default here): each hospital's reply carries its metrics encrypted, as
a one-ciphertext bundle beside its update, and no loss or accuracy in clear. The server adds them
like the updates and, holding no key, sends the encrypted sum back with the next message; the
hospitals decrypt it and report the federation-level figures, which go to results.json. The final
scoring's sum has no next message, so one `query.metrics` exchange after it asks the hospitals to
decrypt it. Every hospital reports the same figures (the median is kept: a lying minority is
outvoted). Chosen over a final evaluate round alone so that every round's figures are known, each one
message later than in plain mode.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from common.atomic import write_bytes_atomic
from common.fednova_sum import effective_steps
from common.he.carried import carry_template
from common.he.keys import ServerHEContext
from common.he.wire import (
    METRICS,
    MODEL,
    EncryptedUpdate,
    InvalidCiphertext,
    flatten,
    layout_id,
    put_bundle,
    take_bundle,
)
from common.int8_wire import put_weights
from common.server_optimizer import ServerOptimizer
from common.site_metrics import SLOTS, TEMPLATE
from common.wire_bytes import content_bytes
from server.he_aggregate import HEAggregator
from server.replies import RejectedPayload, SortedReplies, agree, fednova_steps, reported_figures, sort_replies
from server.rounds import BaseRounds, RoundOutcome

log = logging.getLogger("flwr.fedcare.server")
QUERY_METRICS = "query.metrics"  # answered by client.app.federation_metrics


@dataclass
class HERounds(BaseRounds):
    keys: ServerHEContext
    initial: OrderedDict[str, np.ndarray]  # the seeded initial model: public, it holds no one's data
    global_sum: EncryptedUpdate | None = None  # the last aggregated round's encrypted sum
    previous_sum: EncryptedUpdate | None = None  # the one before: where to go back if hospitals refuse the last
    metrics_sum: EncryptedUpdate | None = None  # aggregate metrics: the last sum no hospital has decrypted yet
    mode: ClassVar[str] = "he"
    model_suffix: ClassVar[str] = ".he"
    _layout: str = field(init=False)
    _num_values: int = field(init=False)

    def __post_init__(self) -> None:
        # With a stateful server optimizer, each update also carries the optimizer's state
        # (common/he/carried.py): the sum's layout is that, not the bare model's.
        # With round-deadline and FedNova the base travels too, whatever the optimizer.
        carried = carry_template(self.initial, ServerOptimizer.from_settings(self.ctx.settings), fednova=self._fednova)
        self._layout = layout_id(carried)
        self._num_values = int(flatten(carried).size)

    @property
    def _fednova(self) -> bool:
        """round-deadline with a FedNova deadline-aggregation: hospitals send per-step models (common/fednova_sum.py),
        and each sum carries the τ_eff the server chose; with "fedavg" sums and headers are as without a deadline."""
        return self.ctx.settings.fednova

    def privacy_facts(self) -> dict[str, Any]:
        return {
            **super().privacy_facts(),
            "he": {
                "scheme": "CKKS",
                **self.keys.params.to_dict(),
                "key_id": self.keys.key_id,
                "model_values": int(flatten(self.initial).size),
                "values_per_update": self._num_values,  # more than the model's with a stateful server optimizer
            },
        }

    _SUMS: ClassVar[tuple[str, ...]] = ("global_sum", "previous_sum", "metrics_sum")

    def state(self) -> dict[str, Any]:
        """The encrypted sums (ciphertexts the server cannot read: a checkpoint holds no secret)."""
        sums = {name: getattr(self, name) for name in self._SUMS}
        return {**super().state(), **{name: None if s is None else s.to_bytes() for name, s in sums.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        from server.checkpoint import CheckpointError

        for name in self._SUMS:
            blob = state.get(name)
            try:
                value = None if blob is None else EncryptedUpdate.from_bytes(blob)
            except InvalidCiphertext as exc:
                raise CheckpointError(f"the checkpoint's {name.replace('_', ' ')} is unusable: {exc}") from exc
            if value is not None and value.header.key_id != self.keys.key_id:
                raise CheckpointError(
                    f"the checkpoint's {name.replace('_', ' ')} is under key set {value.header.key_id}, this run's "
                    f"he-public-context is {self.keys.key_id}: resume with the run's own key set"
                )
            setattr(self, name, value)

    def model_content(self, server_round: int) -> RecordDict:
        """Before any aggregated round, the plaintext initial model; then the last encrypted sum."""
        content = self.ctx.config(server_round)
        content["config"]["he-key-id"] = self.keys.key_id  # RoundConfig.he_key_id: the run's key set
        if self.global_sum is None:
            put_weights(content, self.initial, compression="none")  # float32, one flat array when it can be
        else:
            put_bundle(content, self.global_sum)
        if self.metrics_sum is not None:
            put_bundle(content, self.metrics_sum, part=METRICS)
        return content

    def _model_bytes(self) -> int:
        """The bytes of the model each hospital receives, for results.json."""
        if self.global_sum is None:
            return sum(int(w.nbytes) for w in self.initial.values())
        return self.global_sum.nbytes

    def write_model(self, path: Path) -> None:
        assert self.global_sum is not None  # save_final says why there may be none
        write_bytes_atomic(path, self.global_sum.to_bytes())

    def _aggregator(self, server_round: int, *, metrics: bool = False) -> HEAggregator:
        return HEAggregator(
            self.keys.context_bytes,
            expected_values=len(SLOTS) if metrics else self._num_values,
            run_id=self.ctx.run_id,
            server_round=server_round,
            key_id=self.keys.key_id,
            layout=layout_id(TEMPLATE) if metrics else self._layout,
        )

    @staticmethod
    def _bundle(msg: Message, num_examples: int, *, part: str = MODEL) -> EncryptedUpdate:
        bundle = take_bundle(msg.content, part=part)
        if bundle.header.num_examples != num_examples:
            raise InvalidCiphertext(
                f"ciphertext header says {bundle.header.num_examples} examples, the metrics say {num_examples}"
            )
        return bundle

    def _keep_metrics_sum(self, replies: SortedReplies, metrics: HEAggregator | None) -> None:
        """Forget the pending sum once hospitals reported its figures; keep this round's sum instead."""
        reported = {f.server_round for f in replies.federation}
        if self.metrics_sum is not None and self.metrics_sum.header.server_round in reported:
            self.metrics_sum = None
        if metrics is not None and metrics.accepted:
            if self.metrics_sum is not None:
                log.warning(
                    "round %d's federation metrics were never decrypted by a hospital and are lost",
                    self.metrics_sum.header.server_round,
                )
            self.metrics_sum, _ = metrics.result()

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome:
        aggregator = self._aggregator(server_round)
        metrics = None if self.ctx.settings.per_site_metrics else self._aggregator(server_round, metrics=True)
        contributions: list[tuple[float, int]] = []  # FedNova: (sample count, local steps) of each update summed

        def accept(msg: Message, institution: str, num_examples: int) -> None:
            steps = fednova_steps(msg) if self._fednova else 0  # before anything is added: a rejection leaves no trace
            try:
                bundle = self._bundle(msg, num_examples)
                if metrics is None:
                    aggregator.add(bundle, institution=institution)
                else:
                    # The update and its metrics go into the sums together, or neither does.
                    scores = self._bundle(msg, num_examples, part=METRICS)
                    metrics.check(scores, institution=institution)
                    aggregator.add(bundle, institution=institution)
                    metrics.add(scores, institution=institution)
            except InvalidCiphertext as exc:
                raise RejectedPayload("invalid-ciphertext", str(exc)) from exc
            contributions.append((num_examples, steps))

        content, model_bytes = self.model_content(server_round), self._model_bytes()
        replies = sort_replies(
            self.ctx.send(content, nodes=nodes, message_type=MessageType.TRAIN, server_round=server_round),
            reference=None,
            expect_update=True,
            accept=accept,
            per_site=self.ctx.settings.per_site_metrics,
        )
        replies.bytes_down = content_bytes(content)
        sent = dict(aggregator.bytes_received)
        for who, n in (metrics.bytes_received if metrics else {}).items():
            sent[who] = sent.get(who, 0) + n
        extra = {"bytes_sent": dict(sorted(sent.items())), "model_bytes_to_each": model_bytes}
        if not replies.participants:
            reason = "no valid encrypted update from any hospital"
            if self._refused_by_all(replies):
                reason = self._go_back(server_round)
            self._keep_metrics_sum(replies, None)
            return RoundOutcome(replies, reason=reason, extra=extra)
        self.previous_sum = self.global_sum
        tau = effective_steps(contributions) if self._fednova else None
        self.global_sum, _ = aggregator.result(effective_steps=tau)
        if tau is not None:
            extra["effective_steps"] = round(tau, 4)
        self._keep_metrics_sum(replies, metrics)
        return RoundOutcome(replies, model_path=self.save_round_model(server_round), extra=extra)

    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies:
        """Aggregate metrics: the hospitals score the final model and send the scores encrypted; the sum
        goes back to them in one `query.metrics` exchange, since no further message would carry it."""
        if self.ctx.settings.per_site_metrics:
            return super().evaluate(nodes=nodes, server_round=server_round)
        scores = self._aggregator(server_round, metrics=True)

        def accept(msg: Message, institution: str, num_examples: int) -> None:
            try:
                scores.add(self._bundle(msg, num_examples, part=METRICS), institution=institution)
            except InvalidCiphertext as exc:
                raise RejectedPayload("invalid-ciphertext", str(exc)) from exc

        replies = self.send_evaluate(nodes=nodes, server_round=server_round, accept=accept, per_site=False)
        self._keep_metrics_sum(replies, scores)
        if self.metrics_sum is not None and self.metrics_sum.header.server_round == server_round:
            config = {"server-round": server_round, "fedcare-run-id": str(self.ctx.run_id)}
            content = RecordDict({"config": ConfigRecord(config)})
            put_bundle(content, self.metrics_sum, part=METRICS)
            answers = self.ctx.send(content, nodes=nodes, message_type=QUERY_METRICS, server_round=server_round)
            reports = [
                f
                for msg in answers
                for f in reported_figures(msg, replies.node_institutions.get(msg.metadata.src_node_id, "a hospital"))
            ]
            replies.federation = agree([*replies.federation, *reports])
            self._keep_metrics_sum(replies, None)
        return replies

    def _refused_by_all(self, replies: SortedReplies) -> bool:
        return (
            self.global_sum is not None
            and bool(replies.rejections)
            and all(r.code == "bad-global-model" for r in replies.rejections)
        )

    def _go_back(self, server_round: int) -> str:
        """Every hospital refused the encrypted model: a contribution to it was altered after encryption
        in a way the server cannot see (it parsed, but its check values decrypt wrong). No one can tell
        whose it was, so the model of the round before takes its place and training goes on from there."""
        assert self.global_sum is not None
        bad = self.global_sum.header.server_round
        self.global_sum, self.previous_sum = self.previous_sum, None
        back = f"round {self.global_sum.header.server_round}'s model" if self.global_sum else "the initial model"
        reason = (
            f"every hospital refused the encrypted model of round {bad} (it fails their integrity checks: a "
            f"contribution was altered after encryption); going back to {back}"
        )
        log.error("round %d: %s", server_round, reason)
        return reason

    def save_final(self) -> Path:
        """The encrypted final model: only a hospital can decrypt it (`fedcare he decrypt`)."""
        if self.global_sum is None:
            raise RuntimeError(
                "no encrypted model survived the run: the last aggregated one was refused by every "
                "hospital and nothing was aggregated after it"
            )
        return super().save_final()
