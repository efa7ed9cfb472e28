"""A train message as the SuperLink hands it to a hospital's ClientApp, for tests that call the app directly."""

from __future__ import annotations

import time

from flwr.app import Message, Metadata, RecordDict


def train_message(content: RecordDict, *, run_id: int = 5, node_id: int = 1, message_type: str = "train") -> Message:
    metadata = Metadata(
        run_id=run_id,
        message_id="m1",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)
