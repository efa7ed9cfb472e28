"""Talking to the hospitals through Flower's Grid: who is connected, what a round's message says,
and one push/pull exchange with a fast poll."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from common.round_config import RoundConfig
from common.schema import DatasetSchema
from common.settings import RunSettings

log = logging.getLogger("flwr.fedcare.server")


@dataclass(frozen=True)
class Dropout:
    """A hospital whose reply will not come: its node is gone (or never answered), not its update refused."""

    node_id: int
    reason: str
    detected_after_s: float | None  # seconds after the message went out; None: left out before it went


def _unavailable(reply: Message) -> bool:
    """The SuperLink's own answer for a node that missed its heartbeats (Flower's "Node Unavailable")."""
    return reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(nodes)} of the required {minimum} hospitals connected within {timeout:.0f} s"
            )
        log.info("waiting for hospitals: %d of %d connected", len(nodes), minimum)
        time.sleep(2.0)


def message_config(
    settings: RunSettings, schema: DatasetSchema, server_round: int, *, run_id: int | None = None
) -> ConfigRecord:
    """What every hospital needs to train this round: one set of values for the whole federation,
    parsed at the hospital by `RoundConfig.from_config`."""
    config = RoundConfig.for_round(settings, schema=schema, server_round=server_round, run_id=run_id)
    return ConfigRecord(config.as_config())


def exchange(
    grid: Grid,
    *,
    nodes: list[int],
    content: RecordDict,
    message_type: str,
    server_round: int,
    timeout: float,
    poll_interval: float,
    dropouts: list[Dropout] | None = None,
    content_for: Callable[[int], RecordDict] | None = None,
) -> Iterator[Message]:
    """Push one message per node and yield replies as they are pulled, until all arrive or `timeout` passes.

    Yielding lets a caller handle (and drop) each reply before the next: HE aggregation then holds
    one hospital's ciphertexts at a time, not all of them. Flower's `send_and_receive` sleeps 3 s
    between pulls; polling the SuperLink on loopback every `poll_interval` seconds saves about 1.5 s
    per exchange.

    A node that dies is not waited for until `timeout`: once it has missed its heartbeats the SuperLink
    answers for it ("Node Unavailable"; within 20 s with fedcare's node, `SuperNodeWaits.heartbeat_interval`).
    Such answers, nodes the SuperLink would not take a message for, and nodes silent until `timeout` are
    not yielded but added to `dropouts`, each with its reason. `content_for(node)`: that node's own content
    (its scheduled local steps), when it differs from `content`.
    """
    messages = [
        Message(
            content=content_for(node) if content_for else content,
            dst_node_id=node,
            message_type=message_type,
            group_id=str(server_round),
        )
        for node in nodes
    ]
    started = time.monotonic()
    ids = list(grid.push_messages(messages))
    to_node = {message_id: node for message_id, node in zip(ids, nodes, strict=False) if message_id}
    gone: list[Dropout] = dropouts if dropouts is not None else []
    for node in sorted(set(nodes) - set(to_node.values())):
        gone.append(Dropout(node, "the SuperLink took no message for its node: it is not connected", 0.0))
    pending = set(to_node)
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        pulled = list(grid.pull_messages(pending))
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        for reply in pulled:
            if not _unavailable(reply):
                yield reply
                continue
            after = round(time.monotonic() - started, 1)
            gone.append(Dropout(to_node[reply.metadata.reply_to_message_id], _NODE_GONE, after))
            log.info(
                "round %d: node %d dropped out: %s (noticed %.1f s after the %s message went out)",
                server_round,
                to_node[reply.metadata.reply_to_message_id],
                _NODE_GONE,
                after,
                message_type,
            )
        if pending:
            time.sleep(poll_interval)
    if pending:
        log.warning("round %d: %d hospital(s) did not answer within %.0f s", server_round, len(pending), timeout)
        for message_id in sorted(pending):
            gone.append(Dropout(to_node[message_id], f"no reply within {timeout:.0f} s (round-timeout)", timeout))


_NODE_GONE = "its node stopped answering: the SuperLink missed its heartbeats and reported it unavailable"
