"""`results.json`: the machine-readable record of a run, rewritten after every round.

Rewriting it atomically each round means a crashed run still leaves a valid
file that says how far it got.

With `metrics: "aggregate"` (HE and SecAgg+ modes by default) `per_institution` stays empty: the
federation-level loss, accuracy and training loss come from the aggregate (`SortedReplies.federation`),
possibly a round or two after the round they describe (HE: the hospitals decrypt them with the next
message), and are filled in where they belong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from common.site_metrics import FederationFigures
from server.fedavg import weighted_mean
from server.replies import SortedReplies


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunResults:
    path: Path
    run_id: int
    privacy_mode: str
    model: str
    parameter_count: int
    num_rounds: int
    dp: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    privacy: dict[str, Any] = field(default_factory=dict)  # mode-specific facts, e.g. HE parameters
    metrics: str = "per-site"  # or "aggregate": per-site figures are neither received nor recorded
    update_compression: str = "none"  # or "int8": how plaintext weights travelled (bytes_up, bytes_down per round)
    # The run's server optimizer settings (run-config keys): HE mode needs them to decrypt the final model.
    server_optimizer: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    final_model_path: str | None = None
    initial: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    # One entry per `fedcare run resume` (docs/resume.md): {"from_round", "at", "flower_run_id"}.
    resumed: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_payload(cls, path: Path, payload: dict[str, Any]) -> RunResults:
        """The results a checkpoint kept (what `save` wrote), to go on with after a crash."""
        return cls(path=path, **payload)

    def payload(self) -> dict[str, Any]:
        """What results.json holds."""
        payload = asdict(self)
        payload.pop("path")
        return payload

    def record_resume(self, *, from_round: int, flower_run_id: int) -> None:
        """The run goes on from `from_round` under a new Flower run id after a coordinator crash."""
        self.resumed.append({"from_round": from_round, "at": _now(), "flower_run_id": str(flower_run_id)})
        self.status, self.error, self.finished_at = "running", None, None

    def record_round(
        self,
        *,
        server_round: int,
        replies: SortedReplies,
        model_path: Path,
        skipped: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record who took part; the scores of this round's model arrive with the next message."""
        participants = sorted(replies.participants)
        self.rounds.append(
            {
                "round": server_round,
                "status": "aggregated",
                "participants": participants,
                "rejected": [asdict(r) for r in replies.rejections],
                "skipped": skipped or {},
                "train_loss": self._train_loss(replies, server_round),
                "loss": None,
                "accuracy": None,
                "per_institution": {},
                "epsilon": self._epsilon(participants, replies),
                "dp_events": {name: event.as_record() for name, event in replies.dp_events.items()},
                "model_path": str(model_path),
                **self._bytes(replies),
                **(extra or {}),
            }
        )

    @staticmethod
    def _train_loss(replies: SortedReplies, server_round: int) -> float | None:
        loss = weighted_mean(replies.train_losses)
        if loss is None:  # aggregate metrics: known now when the mode sums in plaintext (SecAgg+)
            loss = next((f.train_loss for f in replies.federation if f.server_round == server_round), None)
        return loss

    @staticmethod
    def _epsilon(participants: list[str], replies: SortedReplies) -> dict[str, float | None]:
        """Cumulative epsilon per institution: null while DP is off, known also for refusing ones."""
        known = {name: replies.epsilon_known.get(name) for name in participants}
        known.update(replies.epsilon_known)
        return dict(sorted(known.items()))

    @staticmethod
    def _bytes(replies: SortedReplies) -> dict[str, Any]:
        """What travelled (common/wire_bytes.py): `bytes_up`, each institution's reply content;
        `bytes_down`, the content sent to each hospital (None: nothing was sent)."""
        return {"bytes_up": dict(sorted(replies.bytes_up.items())), "bytes_down": replies.bytes_down}

    def record_failed_round(
        self,
        *,
        server_round: int,
        reason: str,
        replies: SortedReplies,
        skipped: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.rounds.append(
            {
                "round": server_round,
                "status": "failed",
                "reason": reason,
                "participants": [],
                "rejected": [asdict(r) for r in replies.rejections],
                "skipped": skipped or {},
                "train_loss": None,
                "loss": None,
                "accuracy": None,
                "per_institution": {},
                "epsilon": self._epsilon([], replies),
                "dp_events": {},
                **self._bytes(replies),
                **(extra or {}),
            }
        )

    def record_scores(self, *, after_round: int, replies: SortedReplies) -> None:
        """Scores of the global model produced by `after_round` (0: the initial model), per site; and any
        federation figures from an aggregate, which say themselves which round they are of."""
        for figures in replies.federation:
            self._record_federation(figures)
        if replies.federation and not replies.scores:
            return
        summary = {
            "loss": weighted_mean([(loss, n) for _, loss, _, n in replies.scores]),
            "accuracy": weighted_mean([(acc, n) for _, _, acc, n in replies.scores]),
            "per_institution": {
                who: {"loss": loss, "accuracy": acc, "examples": n} for who, loss, acc, n in replies.scores
            },
        }
        if after_round == 0:
            self.initial = summary
            return
        for entry in self.rounds:
            if entry["round"] == after_round:
                entry.update(summary)

    def _record_federation(self, figures: FederationFigures) -> None:
        """Figures of message round m: its validation scores are of the last model aggregated before m,
        its training loss is round m's."""
        scored = max(
            (e["round"] for e in self.rounds if e["status"] == "aggregated" and e["round"] < figures.server_round),
            default=0,
        )
        if figures.loss is not None or figures.accuracy is not None:
            if scored == 0:
                self.initial = {
                    **(self.initial or {"per_institution": {}}),
                    "loss": figures.loss,
                    "accuracy": figures.accuracy,
                }
            for entry in self.rounds:
                if entry["round"] == scored:
                    entry.update(loss=figures.loss, accuracy=figures.accuracy)
        if figures.train_loss is not None:
            for entry in self.rounds:
                if entry["round"] == figures.server_round and entry["status"] == "aggregated":
                    entry["train_loss"] = figures.train_loss

    def finish(self, *, status: str, final_model_path: Path | None, error: str | None = None) -> None:
        self.status, self.error, self.finished_at = status, error, _now()
        self.final_model_path = str(final_model_path) if final_model_path else None
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.payload())
