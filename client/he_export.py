"""A hospital's way to the plaintext model in HE mode: decrypt the server's encrypted sum.

The server cannot do this (its context has no secret key), so exporting the final model is a
hospital's step: `fedcare he decrypt`, or the demo playing a hospital.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from common.codecs import from_numpy, to_state_dict
from common.he.carried import carry_template, next_global
from common.he.hospital import decrypt_sum
from common.he.keys import load_secret_context
from common.he.wire import EncryptedUpdate, HEHeader, InvalidCiphertext, layout_id
from common.schema import DatasetSchema
from common.server_optimizer import SERVER_OPTIMIZERS, ServerOptimizer
from common.settings import TrainingSettings
from common.tasks.model_task import build_task_model


def decrypt_model(
    encrypted: Path, *, context: Path, schema: DatasetSchema, optimizer: ServerOptimizer | None = None
) -> tuple[OrderedDict[str, torch.Tensor], HEHeader]:
    """The model in `encrypted` (a `.he` file the server wrote) as a state dict, and its header.

    With a stateful server optimizer the file holds the last round's sum and the optimizer's state, and
    the model is the step the hospitals take from them: `optimizer` must be the run's (its settings are
    in results.json, "server_optimizer"). Raises HEKeyError (bad context), InvalidCiphertext (not this
    federation's model, or another server optimizer's) or OSError.
    """
    ctx = load_secret_context(context)
    bundle = EncryptedUpdate.from_bytes(Path(encrypted).read_bytes())
    template = OrderedDict((k, v.detach().numpy()) for k, v in build_task_model(schema).state_dict().items())
    optimizer = optimizer or ServerOptimizer()
    fednova = bundle.header.effective_steps is not None  # a round-deadline run's sum (common/fednova_sum.py)
    carried = carry_template(template, optimizer, fednova=fednova)
    if bundle.header.layout != layout_id(carried):
        for name in SERVER_OPTIMIZERS:
            other = ServerOptimizer.from_settings(TrainingSettings(server_optimizer=name))
            if bundle.header.layout == layout_id(carry_template(template, other, fednova=fednova)):
                raise InvalidCiphertext(
                    f"this model was trained with server-optimizer {name!r} (its state travels with it), not "
                    f"{optimizer.name!r}: give that run's server optimizer settings (results.json, 'server_optimizer')"
                )
    averaged = decrypt_sum(bundle, context=ctx, template=carried)
    weights = next_global(averaged, model=template, optimizer=optimizer, effective_steps=bundle.header.effective_steps)
    return to_state_dict(from_numpy(weights)), bundle.header
