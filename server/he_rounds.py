"""HE mode: the global model stays encrypted on the server, which only adds ciphertexts.

Round 1 sends the seeded initial model in plaintext (random weights, nothing learnt from anyone).
From then on the server holds and forwards only the encrypted sum of the last aggregated round
and the total sample count; each hospital decrypts and divides. The server's context carries no
secret key, so the server cannot read an update, the sum, or the final model.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.app import Message, MessageType, RecordDict

from common.atomic import write_bytes_atomic
from common.codecs import from_numpy
from common.he.keys import ServerHEContext
from common.he.wire import EncryptedUpdate, InvalidCiphertext, flatten, layout_id, put_bundle, take_bundle
from server.he_aggregate import HEAggregator
from server.replies import RejectedPayload, SortedReplies, sort_replies
from server.rounds import BaseRounds, RoundOutcome

log = logging.getLogger("flwr.fedcare.server")


@dataclass
class HERounds(BaseRounds):
    keys: ServerHEContext
    initial: OrderedDict[str, np.ndarray]  # the seeded initial model: public, it holds no one's data
    global_sum: EncryptedUpdate | None = None  # the last aggregated round's encrypted sum
    previous_sum: EncryptedUpdate | None = None  # the one before: where to go back if hospitals refuse the last
    mode: ClassVar[str] = "he"
    model_suffix: ClassVar[str] = ".he"
    _layout: str = field(init=False)
    _num_values: int = field(init=False)

    def __post_init__(self) -> None:
        self._layout = layout_id(self.initial)
        self._num_values = int(flatten(self.initial).size)

    def privacy_facts(self) -> dict[str, Any]:
        return {
            **super().privacy_facts(),
            "he": {
                "scheme": "CKKS",
                **self.keys.params.to_dict(),
                "key_id": self.keys.key_id,
                "model_values": self._num_values,
            },
        }

    def model_content(self, server_round: int) -> RecordDict:
        """Before any aggregated round, the plaintext initial model; then the last encrypted sum."""
        content = self.ctx.config(server_round)
        content["config"]["he-key-id"] = self.keys.key_id  # RoundConfig.he_key_id: the run's key set
        if self.global_sum is None:
            content["arrays"] = from_numpy(self.initial)
        else:
            put_bundle(content, self.global_sum)
        return content

    def _model_bytes(self) -> int:
        """The bytes of the model each hospital receives, for results.json."""
        if self.global_sum is None:
            return sum(int(w.nbytes) for w in self.initial.values())
        return self.global_sum.nbytes

    def write_model(self, path: Path) -> None:
        assert self.global_sum is not None  # save_final says why there may be none
        write_bytes_atomic(path, self.global_sum.to_bytes())

    def train(self, *, nodes: list[int], server_round: int) -> RoundOutcome:
        aggregator = HEAggregator(
            self.keys.context_bytes,
            expected_values=self._num_values,
            run_id=self.ctx.run_id,
            server_round=server_round,
            key_id=self.keys.key_id,
            layout=self._layout,
        )

        def accept(msg: Message, institution: str, num_examples: int) -> None:
            try:
                bundle = take_bundle(msg.content)
                if bundle.header.num_examples != num_examples:
                    raise InvalidCiphertext(
                        f"ciphertext header says {bundle.header.num_examples} examples, the metrics say {num_examples}"
                    )
                aggregator.add(bundle, institution=institution)
            except InvalidCiphertext as exc:
                raise RejectedPayload("invalid-ciphertext", str(exc)) from exc

        content, model_bytes = self.model_content(server_round), self._model_bytes()
        replies = sort_replies(
            self.ctx.send(content, nodes=nodes, message_type=MessageType.TRAIN, server_round=server_round),
            reference=None,
            expect_update=True,
            accept=accept,
        )
        extra = {"bytes_sent": dict(sorted(aggregator.bytes_received.items())), "model_bytes_to_each": model_bytes}
        if not replies.participants:
            reason = "no valid encrypted update from any hospital"
            if self._refused_by_all(replies):
                reason = self._go_back(server_round)
            return RoundOutcome(replies, reason=reason, extra=extra)
        self.previous_sum = self.global_sum
        self.global_sum, _ = aggregator.result()
        return RoundOutcome(replies, model_path=self.save_round_model(server_round), extra=extra)

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
