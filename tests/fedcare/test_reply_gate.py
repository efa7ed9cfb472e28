"""One complete reply per message (fedcare/flower_internals/reply_gate.py), through Flower's own `_push_messages`.

Issue 16: a ClientApp SIGKILLed while uploading its reply left a partial reply in its SuperNode, and the warm
executor's parent answered the same message with an error reply. The node dropped the partial reply after a
patience, then sent the parent's error reply after the *next* message in place of that message's reply, so
every later reply was one message late and the ServerApp waited out its round timeout. These tests replay that
on Flower's real node state, object store and `_push_messages`, with only the SuperLink replaced by a recorder.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

from fedcare import flower_internals as fi

RUN_ID, NODE_ID = 5, 7


@pytest.fixture
def node() -> Iterator[dict[str, Any]]:
    """Flower's SuperNode module with fedcare's patches on (undone after), a fresh state, and a recording link."""
    sci = importlib.import_module("flwr.supernode.start_client_internal")
    saved = {name: getattr(sci, name) for name in ("time", "_pull_and_store_message", "_push_messages")}
    fi.tune_supernode_waits(fi.SuperNodeWaits(reply_wait=0.001, content_patience=0.5))
    store = ObjectStoreFactory().store()
    sent: list[Message] = []

    def send(message: Message, tree: Any, runtime: float) -> tuple[set[str], str]:
        sent.append(message)
        return {node.object_id for node in _nodes(tree)}, "session"

    yield {"sci": sci, "state": InMemoryNodeState(store), "store": store, "sent": sent, "send": send}
    for name, value in saved.items():
        setattr(sci, name, value)


def _nodes(tree: Any) -> Iterator[Any]:
    yield tree
    for child in tree.children:
        yield from _nodes(child)


def _message_in(node: dict[str, Any], server_round: int) -> Message:
    """A message from the SuperLink, stored and taken by the node's ClientApp (as Flower's runtime API does)."""
    meta = Metadata(RUN_ID, "", 0, NODE_ID, "", str(server_round), time.time(), 3600.0, "train")
    message = make_message(meta, content=RecordDict({"config": ConfigRecord({"server-round": server_round})}))
    node["sci"]._insert_message(message, node["state"], node["store"])
    (taken,) = node["state"].get_messages(run_ids=[RUN_ID], is_reply=False, limit=1)
    node["state"].record_message_processing_start(message_id=taken.metadata.message_id)
    assert taken.metadata.message_id == message.metadata.message_id
    return message


def _push_reply(node: dict[str, Any], reply: Message, *, objects_missing: int = 0) -> Message:
    """What the ClientApp's `push_message` does through the runtime API: the reply, then its objects."""
    reply.metadata.__dict__["_message_id"] = reply.object_id
    state = node["state"]
    session = state.start_session(RUN_ID)
    stored, to_push = state.store_message_and_object_tree(reply, get_object_tree(reply), session)
    assert stored and len(to_push) > objects_missing
    objects = get_all_nested_objects(reply)
    for object_id in to_push[objects_missing:]:  # the ClientApp killed before it uploaded the first few
        assert state.store_object(RUN_ID, session, object_id, objects[object_id].deflate())
    return reply


def _update(message: Message) -> Message:
    arrays = ArrayRecord({"w": Array(np.random.default_rng().normal(size=64).astype(np.float32))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"n": 10})}), reply_to=message)


def _error(message: Message) -> Message:
    """The warm executor's parent answering for a ClientApp that died (tasks.answer_failed_task)."""
    return Message(Error(code=0, reason="fedcare executor: the ClientApp was killed by SIGKILL"), reply_to=message)


def _push_stage(node: dict[str, Any], *, timeout: float = 5.0) -> threading.Thread:
    """The SuperNode's push stage after a pulled message (Flower's `_push_messages`), in a thread."""
    stage = threading.Thread(
        target=node["sci"]._push_messages,
        kwargs={"state": node["state"], "object_store": node["store"], "send": node["send"], "push_object": _pushed},
        daemon=True,
    )
    stage.start()
    return stage


def _pushed(run_id: int, session_id: str, object_id: str, content: bytes) -> None:
    assert content, object_id  # an object sent to the SuperLink is never one that has not arrived


def _replied_to(node: dict[str, Any]) -> list[str]:
    return [m.metadata.reply_to_message_id for m in node["sent"]]


def test_a_clientapp_killed_mid_upload_delays_no_later_reply(node: dict[str, Any]) -> None:
    first = _message_in(node, 1)
    partial = _push_reply(node, _update(first), objects_missing=1)  # its ClientApp SIGKILLed mid-upload
    stage = _push_stage(node)
    time.sleep(0.05)
    error = _push_reply(node, _error(first))  # the executor's parent answers for it
    stage.join(timeout=5)
    assert not stage.is_alive()
    # The error reply went out at once, in the first message's push stage; the partial reply never did.
    assert [m.metadata.message_id for m in node["sent"]] == [error.metadata.message_id]

    second = _message_in(node, 2)
    stage = _push_stage(node)
    update = _push_reply(node, _update(second))
    stage.join(timeout=5)
    assert not stage.is_alive(), "the node still waits for a reply to the second message"
    assert _replied_to(node) == [first.metadata.message_id, second.metadata.message_id]
    assert node["sent"][-1].metadata.message_id == update.metadata.message_id
    assert node["state"].get_messages() == []  # nothing left behind to be sent in a later message's place
    assert node["store"].get(partial.metadata.message_id) is None  # the partial reply's objects are gone


def test_a_reply_whose_content_never_arrives_is_given_up_after_the_patience(node: dict[str, Any]) -> None:
    """No other reply comes (the executor's parent died too): the partial reply is dropped unsent after
    `content_patience`, and the push stage ends so the node pulls its next message; a late error reply for
    that message is then dropped, not sent in the next message's place."""
    first = _message_in(node, 1)
    _push_reply(node, _update(first), objects_missing=2)
    started = time.monotonic()
    stage = _push_stage(node)
    stage.join(timeout=5)
    assert not stage.is_alive() and 0.5 <= time.monotonic() - started < 3.0
    assert node["sent"] == [] and node["state"].get_messages() == []

    _push_reply(node, _error(first))  # too late
    second = _message_in(node, 2)
    stage = _push_stage(node)
    update = _push_reply(node, _update(second))
    stage.join(timeout=5)
    assert [m.metadata.message_id for m in node["sent"]] == [update.metadata.message_id]


def test_a_reply_that_completes_after_a_while_is_sent_whole(node: dict[str, Any]) -> None:
    first = _message_in(node, 1)
    reply = _update(first)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    state = node["state"]
    session = state.start_session(RUN_ID)
    _, to_push = state.store_message_and_object_tree(reply, get_object_tree(reply), session)
    stage = _push_stage(node)
    objects = get_all_nested_objects(reply)
    for object_id in to_push:  # a slow upload: the reply is not sent before its last object is in
        time.sleep(0.02)
        assert node["sent"] == []
        state.store_object(RUN_ID, session, object_id, objects[object_id].deflate())
    stage.join(timeout=5)
    assert [m.metadata.message_id for m in node["sent"]] == [reply.metadata.message_id]


def test_a_reply_that_completes_after_its_push_stage_ended_goes_out_at_the_next_empty_pull(
    node: dict[str, Any],
) -> None:
    """The coordinator's crash left a reply of the old run in the node; the push stage after the next pulled
    message found that one, sent it and ended before the new message's reply came. Flower pushes only after a
    pulled message, and the ServerApp, waiting for that reply, sends none (tests/integration/test_resume.py hung)."""
    stale = _message_in(node, 1)
    _push_reply(node, _update(stale))  # answered while the SuperLink was down
    fresh = _message_in(node, 2)
    stage = _push_stage(node)
    stage.join(timeout=5)
    assert not stage.is_alive() and _replied_to(node) == [stale.metadata.message_id]
    update = _push_reply(node, _update(fresh))  # the new message's reply, after its push stage ended

    nothing = node["sci"]._pull_and_store_message(  # the main loop's next pull: the SuperLink has no message
        state=node["state"],
        object_store=node["store"],
        node_config={},
        receive=lambda: None,
        get_run=None,
        get_fab=None,
        pull_object=None,
        confirm_message_received=None,
        trusted_entities=None,
    )
    assert nothing is None
    assert [m.metadata.message_id for m in node["sent"]][-1] == update.metadata.message_id
    assert _replied_to(node) == [stale.metadata.message_id, fresh.metadata.message_id]
