"""Sorting hospital replies into usable updates and rejections, each with a reason.

A reply is rejected, never fatal: the round goes on with the other hospitals. With per-site metrics
each reply's scores are read; in aggregate mode they are not even looked at (a hospital does not send
them), and only the federation-level figures the hospitals decrypted from an aggregate are read.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MetricRecord

from common.codecs import InvalidUpdate
from common.dp_event import EARLIER_RECORD, DPEvent, earlier_events
from common.institution import UNNAMED_PREFIX, institution_name
from common.int8_wire import take_weights
from common.site_metrics import FEDERATION_RECORD, FederationFigures
from common.site_work import WORK_RECORD, SiteWork, WorkReportError
from common.wire_bytes import content_bytes
from server.fedavg import ClientUpdate

log = logging.getLogger("flwr.fedcare.server")


@dataclass(frozen=True)
class Rejection:
    institution: str
    node_id: int
    code: str
    reason: str


class RejectedPayload(ValueError):
    """Raised by an `accept` callback: the reply's payload is unusable; `code` goes to results.json."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


NO_STEPS = "no work report with its local steps: update the hospital's fedcare (round-deadline needs it)"


def fednova_steps(msg: Message) -> int:
    """The local steps in a reply's work report, for FedNova in a mode whose `accept` takes the update into a sum
    (sort_replies checked them against the DP event before); a reply without them is rejected ('no-work-report')."""
    record = msg.content.get(WORK_RECORD)
    if record is None:
        raise RejectedPayload("no-work-report", NO_STEPS)
    try:
        return SiteWork.from_record(record).local_steps
    except WorkReportError as exc:
        raise RejectedPayload("invalid-update", str(exc)) from exc


# Takes a reply's payload (e.g. an encrypted update) once every other check passed: (message,
# institution, sample count). Raises RejectedPayload, and must leave no trace when it does.
Accept = Callable[[Message, str, int], None]


@dataclass
class SortedReplies:
    updates: list[ClientUpdate] = field(default_factory=list)  # plaintext updates (plain mode only)
    participants: list[str] = field(default_factory=list)  # institutions whose update was accepted
    node_institutions: dict[int, str] = field(default_factory=dict)  # node id -> institution, from statuses
    scores: list[tuple[str, float, float, int]] = field(default_factory=list)  # institution, loss, accuracy, n
    train_losses: list[tuple[float, int]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    dp_events: dict[str, DPEvent] = field(default_factory=dict)  # institution -> the round's DP event
    # Institution -> the run's earlier events its reply resent (common.dp_event.EARLIER_RECORD): for the ledger only.
    earlier_events: dict[str, list[DPEvent]] = field(default_factory=dict)
    epsilon_known: dict[str, float] = field(default_factory=dict)  # from refusals that report spending
    # Aggregate metrics: federation-level figures, one per message round they are of (common/site_metrics.py).
    federation: list[FederationFigures] = field(default_factory=list)
    # Bytes on the wire (common/wire_bytes.py), for results.json: each reply's content per institution, and the
    # content the server sent each hospital (set by the mode that sent it; None when nothing was sent).
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: int | None = None
    # Each accepted update's work report (common/site_work.py), by node id: for deadline scheduling and results.json.
    work: dict[int, SiteWork] = field(default_factory=dict)

    def drop_updates_without_steps(self) -> None:
        """FedNova (round-deadline) weighs each update by its local steps: one from a hospital that did not report
        them (an older fedcare) is rejected, with the reason."""
        for u in [u for u in self.updates if u.local_steps is None]:
            self.updates.remove(u)
            self.participants.remove(u.institution)
            self.rejections.append(Rejection(u.institution, u.node_id, "no-work-report", NO_STEPS))

    def record_spending(self, institution: str, event: DPEvent, msg: Message | None = None) -> None:
        """The round's DP event of `institution` (for the ledger and results.json) and the epsilon it reached;
        with `msg`, the run's earlier events it resent (an unusable resend is only logged: this round's event
        and update stand on their own)."""
        self.dp_events[institution] = event
        self.epsilon_known[institution] = event.epsilon
        if msg is not None:
            self.record_resent(institution, msg, run_id=event.run_id, before_round=event.server_round)

    def record_resent(self, institution: str, msg: Message, *, run_id: str, before_round: int) -> None:
        """The run's earlier events `msg` resent, for the ledger (an unusable resend is only logged)."""
        record = msg.content.get(EARLIER_RECORD)
        if record is None:
            return
        try:
            self.earlier_events[institution] = earlier_events(record, run_id=run_id, before_round=before_round)
        except (TypeError, ValueError) as exc:
            log.warning("%s: its resent earlier DP events are unusable and were not forwarded: %s", institution, exc)


def _epsilon(value: object) -> float:
    eps = float(value)  # type: ignore[arg-type]
    if not (np.isfinite(eps) and eps >= 0):
        raise InvalidUpdate(f"reported epsilon {value!r} is not a finite number >= 0")
    return eps


def _dp_event(msg: Message) -> DPEvent | None:
    """The reply's `dp-event` record as the one declared DP event; raises when it is incomplete or unusable."""
    record = msg.content.get("dp-event")
    if record is None:
        return None
    _epsilon(record.get("epsilon"))
    return DPEvent.from_record(record)


def _score(who: str, metrics: MetricRecord) -> tuple[str, float, float, int] | None:
    if "eval-examples" not in metrics or int(metrics["eval-examples"]) <= 0:
        return None
    loss, accuracy = float(metrics["eval-loss"]), float(metrics["eval-accuracy"])
    if not (np.isfinite(loss) and loss >= 0 and 0.0 <= accuracy <= 1.0):
        raise InvalidUpdate(f"scores out of range (loss {loss}, accuracy {accuracy})")
    return (who, loss, accuracy, int(metrics["eval-examples"]))


def _institution(msg: Message) -> str:
    status = None if msg.has_error() else msg.content.get("status")
    name = None if status is None else status.get("institution")
    return institution_name(name, node_id=msg.metadata.src_node_id)


def _work(msg: Message, event: DPEvent | None) -> SiteWork | None:
    """The reply's work report; its steps cannot exceed the DP event's (the steps the ledger was charged for)."""
    record = msg.content.get(WORK_RECORD)
    if record is None:
        return None
    try:
        work = SiteWork.from_record(record)
    except WorkReportError as exc:
        raise InvalidUpdate(str(exc)) from exc
    if work.local_steps < 1:
        raise InvalidUpdate("reports an update trained for 0 local steps")
    if event is not None and work.local_steps > event.steps:
        raise InvalidUpdate(f"reports {work.local_steps} local steps, but its DP event records {event.steps}")
    return work


def _num_examples(metrics: MetricRecord) -> int:
    n = int(metrics["num-examples"])
    if n <= 0:
        raise InvalidUpdate(f"num-examples is {n}; it must be positive")
    return n


def reported_figures(msg: Message, who: str) -> list[FederationFigures]:
    """The federation figures a hospital decrypted and reported (HE aggregate mode); a malformed report
    is dropped with a warning, never the hospital's update: it is a report on the aggregate."""
    record = None if msg.has_error() else msg.content.get(FEDERATION_RECORD)
    if record is None:
        return []
    try:
        return [FederationFigures.from_record(record)]
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s reported unusable federation figures, ignored: %s", who, exc)
        return []


def agree(reports: Iterable[FederationFigures]) -> list[FederationFigures]:
    """One set of figures per round from the hospitals' reports: every honest hospital decrypts the same
    sum, so they agree; the median per figure outvotes a minority that does not, with a warning."""
    by_round: dict[int, list[FederationFigures]] = {}
    for report in reports:
        by_round.setdefault(report.server_round, []).append(report)
    agreed = []
    for server_round, group in sorted(by_round.items()):
        figures: dict[str, float | None] = {}
        for name in ("loss", "accuracy", "train_loss"):
            values = [getattr(r, name) for r in group if getattr(r, name) is not None]
            figures[name] = statistics.median(values) if values else None
            if values and max(values) - min(values) > 1e-6:
                log.warning(
                    "hospitals report different federation %s for round %d (%g to %g); the median is kept",
                    name,
                    server_round,
                    min(values),
                    max(values),
                )
        agreed.append(FederationFigures(server_round=server_round, **figures))
    return agreed


def sort_replies(
    replies: Iterable[Message],
    *,
    reference: dict[str, np.ndarray] | None,
    expect_update: bool,
    accept: Accept | None = None,
    per_site: bool = True,
    resent_of: tuple[str, int] | None = None,
) -> SortedReplies:
    """Validate each reply; `reference` is the global model plaintext updates must match.

    With `accept`, the update is not plaintext weights: `accept` takes the payload (last, after every
    other check), and `updates` stays empty; for replies without an update (`expect_update` false) it
    takes their encrypted scores. `per_site`: read each hospital's scores and training loss; otherwise
    only the federation figures reported from an aggregate. `resent_of` (the fedcare run id, this message's
    round): replies without a DP event of their own (the final scoring) may resend the run's earlier DP events,
    kept for the ledger.
    """
    out = SortedReplies()
    reports: list[FederationFigures] = []
    for msg in replies:
        node_id, who = msg.metadata.src_node_id, _institution(msg)
        if not who.startswith(UNNAMED_PREFIX):
            out.node_institutions[node_id] = who
        if not msg.has_error():
            out.bytes_up[who] = out.bytes_up.get(who, 0) + content_bytes(msg.content)
        if msg.has_error():
            out.rejections.append(
                Rejection(who, node_id, "node-error", msg.error.reason or f"error code {msg.error.code}")
            )
            continue
        status = msg.content.get("status")
        if status is None or not bool(status.get("ok", False)):
            code = str(status.get("code", "refused")) if status else "no-status"
            reason = str(status.get("reason", "")) if status else "reply carries no status record"
            if status is not None and "epsilon" in status:
                try:
                    out.epsilon_known[who] = _epsilon(status["epsilon"])
                except (InvalidUpdate, TypeError, ValueError) as exc:
                    reason += f" (and its reported spending is unusable: {exc})"
            _keep_spending(out, msg, who, resent_of)  # trained, then could not send: the spending still counts
            out.rejections.append(Rejection(who, node_id, code, reason))
            continue
        try:
            metrics = msg.content["metrics"]
            score = _score(who, metrics) if per_site else None
            if not expect_update:
                if accept is not None:
                    accept(msg, who, _num_examples(metrics))
                if score is not None:
                    out.scores.append(score)
                reports += reported_figures(msg, who)
                _count_spending(out, msg, who, None, resent_of)
                continue
            weights = None
            if accept is None:
                assert reference is not None
                weights = take_weights(msg.content, reference=reference, missing="reply has no model weights")
            n = _num_examples(metrics)
            loss = float(metrics["train-loss"]) if per_site else float("nan")
            event = _dp_event(msg)
            work = _work(msg, event)
            if accept is not None:
                accept(msg, who, n)
            # Every check passed: only now does anything of this reply count.
            if score is not None:
                out.scores.append(score)
            if np.isfinite(loss):
                out.train_losses.append((loss, n))
            if weights is not None:
                out.updates.append(ClientUpdate(who, node_id, weights, n, work.local_steps if work else None))
            if work is not None:
                out.work[node_id] = work
            out.participants.append(who)
            reports += reported_figures(msg, who)
            _count_spending(out, msg, who, event, resent_of)  # no event: SecAgg+'s score-only final scoring
        except RejectedPayload as exc:
            out.rejections.append(Rejection(who, node_id, exc.code, str(exc)))
            _keep_spending(out, msg, who, resent_of)
        except (InvalidUpdate, KeyError, TypeError, ValueError) as exc:
            out.rejections.append(Rejection(who, node_id, "invalid-update", str(exc)))
            _keep_spending(out, msg, who, resent_of)
    out.federation = agree(reports)
    return out


def _keep_spending(out: SortedReplies, msg: Message, who: str, resent_of: tuple[str, int] | None) -> None:
    """A rejected update was still trained: its (valid) DP event goes to the ledger all the same, so
    no spending is lost; only the update itself is dropped. So do a rejected final scoring's resent events."""
    try:
        event = _dp_event(msg)
    except (InvalidUpdate, TypeError, ValueError):
        return  # an unusable event is named in the rejection's reason already, or the reply has none
    _count_spending(out, msg, who, event, resent_of)


def _count_spending(
    out: SortedReplies, msg: Message, who: str, event: DPEvent | None, resent_of: tuple[str, int] | None
) -> None:
    """The reply's own DP event with the earlier ones it resent; without one (a final scoring, `resent_of` set),
    the earlier ones it resent."""
    if event is not None:
        out.record_spending(who, event, msg)
    elif resent_of is not None:
        out.record_resent(who, msg, run_id=resent_of[0], before_round=resent_of[1])
