"""The global model a train or evaluate message carries, as this hospital checks and reads it.

Plaintext weights (float32 or int8), or in HE mode the server's encrypted sum of an earlier round of this
run, decrypted and divided here, then moved by the run's server optimizer (common/he/carried.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Message
from torch import nn

from common.codecs import InvalidUpdate, check_update, to_numpy, to_record
from common.int8_wire import WEIGHT_RECORDS, take_weights
from common.server_optimizer import ServerOptimizer

if TYPE_CHECKING:
    import tenseal as ts


def incoming_weights(
    msg: Message,
    *,
    model: nn.Module,
    secret_context: ts.Context | None,
    server_round: int,
    run_id: int,
    optimizer: ServerOptimizer | None = None,
) -> OrderedDict[str, np.ndarray]:
    """The global model in the message, checked against this hospital's model: plaintext weights, or
    in HE mode the server's encrypted sum of an earlier round of this run, decrypted and divided here,
    then moved by the run's server optimizer (`optimizer` takes up the state the sum carries)."""
    reference = to_numpy(to_record(model.state_dict()))
    content = msg.content
    if secret_context is not None and not any(key in content for key in WEIGHT_RECORDS):
        from common.he.carried import carry_template, next_global
        from common.he.hospital import decrypt_sum
        from common.he.wire import InvalidCiphertext, take_bundle

        optimizer = optimizer or ServerOptimizer()  # FedAvg: the sum is the model's own layout

        try:
            bundle = take_bundle(content)
            h = bundle.header
            if h.run_id != run_id or not 1 <= h.server_round < server_round:
                raise InvalidCiphertext(
                    f"the encrypted model is from run {h.run_id} round {h.server_round}; expected "
                    f"run {run_id}, a round before {server_round}"
                )
            # A FedNova sum (round-deadline) says so in its header, with the steps to take (common/fednova_sum.py).
            fednova = h.effective_steps is not None
            template = carry_template(reference, optimizer, fednova=fednova)
            averaged = decrypt_sum(bundle, context=secret_context, template=template)
            weights = next_global(averaged, model=reference, optimizer=optimizer, effective_steps=h.effective_steps)
        except (InvalidCiphertext, ValueError) as exc:  # ValueError: carried optimizer state that does not fit
            raise InvalidUpdate(f"encrypted global model rejected: {exc}") from exc
        check_update(weights, reference=reference)
        return weights
    return take_weights(content, reference=reference, missing="the message carries no global model")  # float32 or int8
