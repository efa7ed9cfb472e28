"""Talking to the hospitals through Flower's Grid: who is connected, what a round's message says,
and one push/pull exchange with a fast poll."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.round_config import RoundConfig
from common.schema import DatasetSchema
from common.settings import RunSettings

log = logging.getLogger("flwr.fedcare.server")


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
) -> Iterator[Message]:
    """Push one message per node and yield replies as they are pulled, until all arrive or `timeout` passes.

    Yielding lets a caller handle (and drop) each reply before the next: HE aggregation then holds
    one hospital's ciphertexts at a time, not all of them. Flower's `send_and_receive` sleeps 3 s
    between pulls; polling the SuperLink on loopback every `poll_interval` seconds saves about 1.5 s
    per exchange.
    """
    messages = [
        Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(server_round))
        for node in nodes
    ]
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pulled = list(grid.pull_messages(pending))
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        yield from pulled
        if pending:
            time.sleep(poll_interval)
    if pending:
        log.warning("round %d: %d hospital(s) did not answer within %.0f s", server_round, len(pending), timeout)
