"""The chaos soak's ClientApp: fedcare's own, except that a hospital told so sends a corrupted update.

`bench/chaos_app.py` copies this file into a throwaway copy of the fedcare app as `chaos_client.py`. A
hospital whose node config's `chaos-file` holds `{"update": "nan", "from_round": N}` (the soak writes it for one
run) replaces every array of its train replies from round N on: NaN for float arrays, random bytes for the
rest (HE ciphertexts).
Every other message is answered by fedcare's ClientApp unchanged. Not part of fedcare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client import app as fedcare

app = ClientApp()


def _corrupt(array: Array, how: str) -> Array:
    if how == "nan" and array.dtype.startswith("float"):
        return Array(np.full(array.shape, np.nan, dtype=array.dtype))
    return Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=os.urandom(len(array.data)))


def _server_round(msg: Message) -> int:
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return 0


def _corruption(msg: Message, context: Context) -> str:
    path = Path(str(context.node_config.get("chaos-file", "")))
    if not path.is_file():
        return ""
    spec = json.loads(path.read_text())
    return str(spec["update"]) if _server_round(msg) >= int(spec.get("from_round", 1)) else ""


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = fedcare.train(msg, context)
    how = _corruption(msg, context)
    if how and reply.has_content():
        for name, record in list(reply.content.array_records.items()):
            reply.content[name] = ArrayRecord({key: _corrupt(array, how) for key, array in record.items()})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return fedcare.evaluate(msg, context)


@app.query("metrics")
def federation_metrics(msg: Message, context: Context) -> Message:
    return fedcare.federation_metrics(msg, context)


@app.query("liveness")
def liveness(msg: Message, context: Context) -> Message:
    return fedcare.liveness(msg, context)
