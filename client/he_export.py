"""A hospital's way to the plaintext model in HE mode: decrypt the server's encrypted sum.

The server cannot do this (its context has no secret key), so exporting the final model is a
hospital's step: `fedcare he decrypt`, or the demo playing a hospital.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from common.codecs import from_numpy, to_state_dict
from common.he.hospital import decrypt_sum
from common.he.keys import load_secret_context
from common.he.wire import EncryptedUpdate, HEHeader
from common.schema import DatasetSchema
from common.tasks.model_task import build_task_model


def decrypt_model(
    encrypted: Path, *, context: Path, schema: DatasetSchema
) -> tuple[OrderedDict[str, torch.Tensor], HEHeader]:
    """The model in `encrypted` (a `.he` file the server wrote) as a state dict, and its header.

    Raises HEKeyError (bad context), InvalidCiphertext (not this federation's model) or OSError.
    """
    ctx = load_secret_context(context)
    bundle = EncryptedUpdate.from_bytes(Path(encrypted).read_bytes())
    template = OrderedDict((k, v.detach().numpy()) for k, v in build_task_model(schema).state_dict().items())
    weights = decrypt_sum(bundle, context=ctx, template=template)
    return to_state_dict(from_numpy(weights)), bundle.header
