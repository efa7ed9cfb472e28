"""SecAgg+ mode: the server learns only the weighted sum of the hospitals' updates.

Each round runs Flower's SecAgg+ (four message exchanges, see `server.secagg_protocol`) on the
nodes the ServerApp's loop chose, minus nodes that look dead:

- A node that missed a stage of an earlier round is a suspect: the SuperLink keeps listing a
  crashed SuperNode for about 44 s, and every stage would wait `secagg-timeout` for it. Before
  the next round a suspect gets a liveness ping (a `query.liveness` message, answered without
  importing torch); it takes part again once it answers, and until then it is left out and
  results.json says so.
- A node that leaves during the round is handled by the protocol: before it shared keys it is
  simply dropped; after, the survivors' shares remove its masks. When that is impossible the
  round fails with the stage and the reason; it is never silently skipped. A failure before
  any hospital trained is retried once with the nodes that answered.

The averaged model is plaintext on the server (that is what SecAgg+ reveals), so the saved models
(`round-N.pt`, `final_model.pt`) are exactly as in plain mode. With `round-deadline` each hospital gets its
own schedule in the training stage and masks its per-step model; the server finishes FedNova on the unmasked
average (`server.secagg_sum`, docs/compute.md).

Metrics: the masked vector ends with each hospital's metrics per training example
(`common.site_metrics`); unmasked, they give the round's federation figures. In aggregate mode that is
all the server learns, and the final scoring is a score-only SecAgg+ round (an evaluate message would
carry each hospital's scores in clear). With per-site metrics, everything is as in plain mode.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from common.codecs import InvalidUpdate, check_update
from common.institution import institution_name
from common.int8_wire import take_weights
from common.settings import SECAGG_MODULUS
from common.site_metrics import SCORE_ONLY_RECORD, FederationFigures
from server.messaging import Dropout, exchange
from server.replies import Rejection, SortedReplies
from server.rounds import PlaintextModelRounds, RoundContext, RoundOutcome, scheduled_content
from server.secagg_protocol import STAGES, SecAggRound, run_secagg_round
from server.secagg_quantization import error_bound, quantization_facts
from server.secagg_sum import MaskedReplies

log = logging.getLogger("flwr.fedcare.server")

LIVENESS = "query.liveness"


@dataclass
class SecAggRounds(PlaintextModelRounds):
    mode: ClassVar[str] = "secagg"
    suspects: dict[int, str] = field(default_factory=dict)  # node id -> why it may be dead
    institutions: dict[int, str] = field(default_factory=dict)  # node id -> institution, as last reported

    @classmethod
    def create(cls, ctx: RoundContext, *, weights: OrderedDict[str, np.ndarray]) -> SecAggRounds:
        s = ctx.settings
        facts = quantization_facts(s)
        log.info(
            "SecAgg+ mode for run %d: the server learns only the sum; %d shares, threshold %d, stage timeout "
            "%.0f s; quantization step %.3g (clipping-range %g, quantization-range %d): each averaged value is "
            "off by < %.3g x max-weight / mean examples per hospital",
            ctx.run_id,
            s.num_shares,
            s.reconstruction_threshold,
            s.secagg_timeout,
            facts["quantization_step"],
            s.clipping_range,
            s.quantization_range,
            facts["quantization_step"],
        )
        return cls(ctx, weights)

    def privacy_facts(self) -> dict[str, Any]:
        s = self.ctx.settings
        return {
            **super().privacy_facts(),
            "secagg": {
                "num_shares": s.num_shares,
                "reconstruction_threshold": s.reconstruction_threshold,
                "timeout": s.secagg_timeout,
                "quantization": quantization_facts(s),
            },
        }

    def state(self) -> dict[str, Any]:
        """The averaged model, and who is suspected dead (node ids survive a SuperLink restart with --database)."""
        return {
            **super().state(),
            "suspects": {str(n): why for n, why in self.suspects.items()},
            "institutions": {str(n): who for n, who in self.institutions.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.suspects = {int(n): str(why) for n, why in dict(state.get("suspects") or {}).items()}
        self.institutions = {int(n): str(who) for n, who in dict(state.get("institutions") or {}).items()}

    # ---- who takes part ------------------------------------------------------------------------
    def _who(self, node: int) -> str:
        return institution_name(self.institutions.get(node), node_id=node)

    def _ping(self, nodes: list[int], *, server_round: int) -> set[int]:
        """Nodes that answer a liveness query within the stage timeout."""
        content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
        replies = exchange(
            self.ctx.grid,
            nodes=nodes,
            content=content,
            message_type=LIVENESS,
            server_round=server_round,
            timeout=self.ctx.settings.secagg_timeout,
            poll_interval=self.ctx.settings.poll_interval,
        )
        answered = set()
        for reply in replies:
            if not reply.has_error():
                answered.add(reply.metadata.src_node_id)
                if "status" in reply.content:
                    self.institutions[reply.metadata.src_node_id] = str(reply.content["status"].get("institution"))
        return answered

    def _live(self, nodes: list[int], *, server_round: int) -> tuple[list[int], dict[str, str]]:
        """`nodes` minus suspects that do not answer a ping; also forgets suspects no longer listed."""
        self.suspects = {n: why for n, why in self.suspects.items() if n in nodes}
        if self.suspects:
            back = self._ping(sorted(self.suspects), server_round=server_round)
            for node in back:
                log.info("round %d: %s answers again and takes part", server_round, self._who(node))
                del self.suspects[node]
        excluded = {
            self._who(n): f"left out: {why}; no answer to a liveness ping within "
            f"{self.ctx.settings.secagg_timeout:.0f} s"
            for n, why in self.suspects.items()
        }
        for who, why in excluded.items():
            log.warning("round %d: %s %s", server_round, who, why)
        self.ctx.dropouts.extend(Dropout(n, excluded[self._who(n)], None) for n in self.suspects)  # results: dropped
        return [n for n in nodes if n not in self.suspects], excluded

    # ---- one round -------------------------------------------------------------------------------
    def _attempt(
        self, nodes: list[int], server_round: int, *, score_only: bool = False
    ) -> tuple[SecAggRound, MaskedReplies]:
        s = self.ctx.settings
        checked = MaskedReplies(per_site=s.per_site_metrics)
        content, content_for = self.model_content(server_round), None
        if score_only:
            content[SCORE_ONLY_RECORD] = ConfigRecord({"score-only": True})
            checked.resent_of = (str(self.ctx.run_id), server_round)
        elif s.round_deadline > 0:  # each hospital's schedule, as in plain mode
            if s.fednova:  # the sum is of per-step models, to be finished from the model sent
                checked.base = take_weights(content, reference=self.weights)
            content_for = partial(scheduled_content, content, s.round_deadline, self.ctx.schedule)
        result = run_secagg_round(
            grid=self.ctx.grid,
            settings=self.ctx.settings,
            nodes=nodes,
            server_round=server_round,
            model_content=content,
            check_replies=checked,
            content_for=content_for,
        )
        return result, checked

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome:
        s = self.ctx.settings
        live, excluded = self._live(nodes, server_round=server_round)
        extra: dict[str, Any] = {"secagg": {"excluded": excluded}}
        need = max(2, s.reconstruction_threshold)
        if len(live) < need:
            return RoundOutcome(
                SortedReplies(),
                reason=f"only {len(live)} live hospital(s); SecAgg+ needs {need} "
                f"(reconstruction-threshold {s.reconstruction_threshold})",
                extra=extra,
            )
        if len(live) * s.quantization_range >= SECAGG_MODULUS:
            return RoundOutcome(
                SortedReplies(),
                reason=f"{len(live)} hospitals x quantization-range "
                f"{s.quantization_range} reaches 2**32: the masked sum would wrap; lower "
                "quantization-range",
                extra=extra,
            )
        result, checked = self._attempt(live, server_round)
        failure = result.failure
        survivors = sorted(result.answered.get(failure.stage, set())) if failure else []
        if failure and failure.stage in ("setup", "share-keys") and need <= len(survivors) < len(live):
            log.warning(
                "round %d: %s; nobody trained yet, retrying once with the %d hospitals that answered",
                server_round,
                failure,
                len(survivors),
            )
            why = f"no reply to SecAgg+ stage '{failure.stage}' of round {server_round}, first attempt"
            self._suspect(set(live) - set(survivors), why)
            self.ctx.dropouts.extend(Dropout(n, why, None) for n in sorted(set(live) - set(survivors)))
            extra["secagg"]["excluded"].update({self._who(n): why for n in set(live) - set(survivors)})
            extra["secagg"]["retried_after"] = str(failure)
            live = survivors
            result, checked = self._attempt(live, server_round)
        return self._finish(result, checked, live=live, server_round=server_round, extra=extra)

    def _suspect(self, nodes: set[int], why: str) -> None:
        for node in nodes:
            self.suspects.setdefault(node, why)

    def _finish(
        self, result: SecAggRound, checked: MaskedReplies, *, live: list[int], server_round: int, extra: dict[str, Any]
    ) -> RoundOutcome:
        s, replies = self.ctx.settings, checked.replies
        self.institutions.update(result.institutions)
        self.institutions.update(replies.node_institutions)
        replies.bytes_up, replies.bytes_down = result.bytes_by(self._who)
        missed: dict[int, str] = {}
        for stage in STAGES:  # in protocol order: a node is blamed for the first stage it missed
            for node in set(live) - result.answered.get(stage, set(live)):
                missed.setdefault(
                    node,
                    f"no usable reply to SecAgg+ stage '{stage}' of round {server_round} "
                    f"(its node stopped answering, or no reply within {s.secagg_timeout:.0f} s)",
                )
        for node, why in sorted(missed.items()):
            self._suspect({node}, why)
            replies.rejections.append(Rejection(self._who(node), node, "dropped-out", why))
        info = extra["secagg"]
        info.update(
            {
                "hospitals": len(live),
                "answered": {k: len(v) for k, v in result.answered.items()},
                "stage_seconds": result.seconds,
            }
        )
        if result.failure is not None or result.average is None:
            reason = str(result.failure) if result.failure else "no aggregate"
            return RoundOutcome(replies, reason=reason, extra=extra)
        bound = error_bound(
            clipping_range=s.clipping_range,
            quantization_range=s.quantization_range,
            max_weight=s.max_weight,
            num_examples=checked.counts,
        )
        info["quantization_error_bound"] = bound
        try:
            values = result.average[:-1]
            if checked.base is not None:  # FedNova: τ_eff steps of the per-step average, from the model sent
                values, tau = checked.fednova(values, max_weight=s.max_weight, quantization_range=s.quantization_range)
                bound *= tau  # the per-step average's quantization error is taken τ_eff times
                info["quantization_error_bound"] = bound
                extra["effective_steps"] = round(tau, 4)
            average = self._named(values)
        except InvalidUpdate as exc:
            return RoundOutcome(replies, reason=f"the unmasked sum is unusable: {exc}", extra=extra)
        self._read_figures(replies, result.average[-1], server_round=server_round)
        self.apply_average(average)
        path = self.save_round_model(server_round)
        log.info(
            "round %d: SecAgg+ sum of %d update(s); quantization error per value < %.3g; stages %s",
            server_round,
            len(checked.counts),
            bound,
            result.seconds,
        )
        return RoundOutcome(replies, model_path=path, extra=extra)

    def _named(self, average: list[np.ndarray]) -> OrderedDict[str, np.ndarray]:
        if len(average) != len(self.weights):
            raise InvalidUpdate(f"{len(average)} tensors, the model has {len(self.weights)}")
        named = OrderedDict(
            (name, np.asarray(value).astype(ref.dtype).reshape(ref.shape))
            for (name, ref), value in zip(self.weights.items(), average, strict=False)
        )
        check_update(named, reference=self.weights)
        return named

    def _read_figures(self, replies: SortedReplies, aggregate: np.ndarray, *, server_round: int) -> None:
        """Aggregate metrics: the federation figures from the unmasked metrics array (per-site: unused)."""
        if not self.ctx.settings.per_site_metrics:
            try:
                replies.federation = [FederationFigures.from_aggregate(aggregate, server_round=server_round)]
            except ValueError as exc:  # not the metrics array: a hospital of another fedcare version
                log.error("round %d: no federation figures, the unmasked metrics are unusable: %s", server_round, exc)

    # ---- after the rounds ------------------------------------------------------------------------
    def evaluate(self, *, nodes: list[int], server_round: int) -> SortedReplies:
        """Scored by the hospitals not suspected dead, so a crashed node cannot stall the end of the run;
        in aggregate mode through a score-only SecAgg+ round."""
        live = [n for n in nodes if n not in self.suspects]
        if self.ctx.settings.per_site_metrics:
            return super().evaluate(nodes=live, server_round=server_round)
        result, checked = self._attempt(live, server_round, score_only=True)
        if result.failure is not None or result.average is None:
            log.error(
                "final scoring (SecAgg+, round %d) failed: %s; the final model's federation figures are unknown",
                server_round,
                result.failure or "no aggregate",
            )
            return checked.replies
        self._read_figures(checked.replies, result.average[-1], server_round=server_round)
        return checked.replies
