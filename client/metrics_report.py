"""How a hospital reports its metrics: in clear (per-site), or only inside the aggregate.

In aggregate mode (`metrics = "aggregate"`, the default in HE and SecAgg+ modes) a reply carries no
loss or accuracy of this hospital, only its training-example count (the weight every mode sends in
clear). Its metrics travel as a `common.site_metrics.SiteMetrics` vector inside the aggregate:

- HE: as a second, one-ciphertext bundle beside the model (its `METRICS` part, in the model's records), summed by the
  server like the model. The server cannot decrypt the sum; it sends it back with the next message,
  and every hospital decrypts it and reports the federation-level figures in clear
  (`federation-metrics`): they are totals over the federation, which is what aggregate mode reveals.
- SecAgg+: as one more array of the masked vector (`client/secagg_client.py`); the server unmasks the
  sum like the model's.

What still travels in clear in every mode, because the ledger and the round need it: the status (ok,
refusal code and reason, institution name), the training-example count, and the DP event (epsilon).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from client.local_round import LocalRound, RoundRefused
from client.training import Score, TrainingOutcome
from common.site_metrics import FEDERATION_RECORD, TEMPLATE, FederationFigures, SiteMetrics

if TYPE_CHECKING:
    import tenseal as ts

log = logging.getLogger("flwr.fedcare.client")


def site_metrics(local: LocalRound, before: Score, outcome: TrainingOutcome | None = None) -> SiteMetrics:
    """This hospital's metrics as sums; refuses (before any training when `outcome` is None) scores
    that cannot be right, as the server would reject them in per-site mode."""
    try:
        return SiteMetrics.of(
            eval_loss=before.loss,
            eval_accuracy=before.accuracy,
            eval_examples=before.examples,
            train_loss=None if outcome is None else outcome.loss,
            train_examples=0 if outcome is None else local.train_examples,
        )
    except ValueError as exc:
        raise RoundRefused(code="invalid-scores", reason=str(exc), institution=local.institution) from exc


def decrypt_figures(
    content: RecordDict, *, context: ts.Context, run_id: int, latest_round: int, institution: str
) -> FederationFigures | None:
    """The federation figures in an encrypted metrics sum of this run, of round `latest_round` or
    earlier; None (logged) when the message carries none or it is unusable: metrics are not worth a round."""
    from common.he.hospital import decrypt_sum  # TenSEAL only where HE is used
    from common.he.params import HEConfigError
    from common.he.wire import METRICS, InvalidCiphertext, has_bundle, take_bundle

    if not has_bundle(content, part=METRICS):
        return None
    try:
        bundle = take_bundle(content, part=METRICS)
        h = bundle.header
        if h.run_id != run_id or not 1 <= h.server_round <= latest_round:
            raise InvalidCiphertext(
                f"it is from run {h.run_id} round {h.server_round}; expected run {run_id}, round {latest_round} "
                "or earlier"
            )
        mean = decrypt_sum(bundle, context=context, template=TEMPLATE)
    except (InvalidCiphertext, HEConfigError) as exc:
        log.warning("[%s] the encrypted metrics sum is unusable, no federation figures reported: %s", institution, exc)
        return None
    return FederationFigures.from_aggregate(next(iter(mean.values())), server_round=h.server_round)


def received_figures(msg: Message, local: LocalRound) -> FederationFigures | None:
    """HE aggregate mode: the federation figures of the last aggregated round, which the server sends
    encrypted with the model."""
    if local.secret_context is None or local.config.per_site_metrics:
        return None
    return decrypt_figures(
        msg.content,
        context=local.secret_context,
        run_id=local.run_id,
        latest_round=local.config.server_round - 1,
        institution=local.institution,
    )


def put_encrypted_metrics(content: RecordDict, local: LocalRound, site: SiteMetrics) -> None:
    """HE aggregate mode: the metrics vector, per training example, encrypted for the server to add."""
    from common.he.hospital import encrypt_update
    from common.he.wire import METRICS, put_bundle

    assert local.secret_context is not None
    try:
        bundle = encrypt_update(
            site.as_tensor(local.train_examples),
            num_examples=local.train_examples,
            context=local.secret_context,
            run_id=local.run_id,
            server_round=local.config.server_round,
        )
    except ValueError as exc:  # a loss beyond what the CKKS parameters hold
        raise RoundRefused(code="cannot-encrypt", reason=f"metrics: {exc}", institution=local.institution) from exc
    put_bundle(content, bundle, part=METRICS)


def masked_metrics(site: SiteMetrics, *, num_examples: int, limit: float, institution: str) -> np.ndarray:
    """SecAgg+: the vector per training example, within what SecAgg+ can carry unclipped (`limit` is
    clipping-range over this hospital's weight). Only an absurd loss reaches it; it is then reported capped."""
    values = site.per_example(num_examples)
    capped = np.clip(values, -limit, limit)
    if not np.array_equal(capped, values):
        log.warning(
            "[%s] a loss is too large for SecAgg+'s clipping range; it is reported capped at %.3g per example",
            institution,
            limit,
        )
    return capped


def put_figures(content: RecordDict, figures: FederationFigures | None) -> None:
    if figures is not None:
        content[FEDERATION_RECORD] = ConfigRecord(figures.as_record())
