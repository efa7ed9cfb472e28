"""The SuperLink's long polls, on Flower's own handlers and a real SQLite LinkState: an empty pull waits for
what it asks for, and is answered the moment it is stored."""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode, Status
from flwr.proto.fleet_pb2 import PullMessagesRequest
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullAppMessagesRequest
from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

from fedcare.flower_internals import superlink as sl

SUPERLINK_NODE_ID = 1  # a message from the ServerApp comes from the SuperLink's own node id


@pytest.fixture
def restored_superlink():
    """Undo `hold_empty_pulls`: it patches Flower's classes and handler modules for the whole process."""
    states = [getattr(importlib.import_module(m), c) for m, c in sl.LINK_STATES]
    patched = ("store_message_and_object_tree", "create_run", "store_object")
    saved = [(s, n, s.__dict__.get(n)) for s in states for n in patched]  # None: inherited (store_object)
    fleet, runtime = importlib.import_module(sl.FLEET_HANDLERS), importlib.import_module(sl.RUNTIME_HANDLERS)
    saved += [(fleet, "pull_messages", fleet.pull_messages)]
    saved += [(runtime, n, getattr(runtime, n)) for n in ("pull_messages", "acquire_task")]
    yield fleet, runtime
    for owner, name, value in saved:
        if value is None:
            delattr(owner, name)
        else:
            setattr(owner, name, value)


@pytest.fixture
def link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A SQLite LinkState as `flower-superlink --database` makes it, with one active node and a running run."""
    database = str(tmp_path / "superlink.db")
    objects = ObjectStoreFactory(database)
    state = LinkStateFactory(database, NoOpFederationManager(), objects).state()
    node = state.create_node("aid", "hospital-1", b"k" * 40, 10)
    state.activate_node(node, 10)
    other = state.create_node("aid", "hospital-2", b"j" * 40, 10)
    state.activate_node(other, 10)
    run = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    task = state.get_tasks(statuses=[Status.PENDING])[0]
    assert state.claim_task(task.task_id) and state.activate_task(task.task_id)
    monkeypatch.setattr(TaskIdentity, "_run_id", run)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    return state, objects.store(), node, other, run


def _send(state, run: int, node: int, *, upload_after: float = 0.0) -> str:
    """What the ServerApp's PushMessages and PushObjects do: the message first, its objects `upload_after`
    seconds later; the message's id."""
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    message = Message(content, dst_node_id=node, message_type="train")
    message.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    message.metadata.__dict__["_message_id"] = message.object_id
    session = state.start_session(run)
    stored, missing = state.store_message_and_object_tree(message, get_object_tree(message), session)
    assert stored and missing
    time.sleep(upload_after)
    objects = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}
    for object_id in missing:
        assert state.store_object(run, session, object_id, objects[object_id])
    return message.metadata.message_id


def _send_later(state, run: int, node: int, *, after: float, upload_after: float = 0.0) -> threading.Thread:
    """`_send`, `after` seconds from now, from another thread."""

    def send() -> None:
        time.sleep(after)
        _send(state, run, node, upload_after=upload_after)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _pull(fleet, state, store, node: int) -> tuple[Any, float]:
    """A hospital's Fleet `PullMessages`, through the handler the SuperLink's servicer calls: (response, seconds)."""
    started = time.monotonic()
    response = fleet.pull_messages(request=PullMessagesRequest(node=Node(node_id=node)), state=state, store=store)
    return response, time.monotonic() - started


def test_an_empty_poll_is_answered_the_moment_a_message_for_its_node_is_stored(restored_superlink, link) -> None:
    fleet, _ = restored_superlink
    state, store, node, _, run = link
    sl.hold_empty_pulls(fleet_hold=6.0, serverapp_hold=0, bells=sl.Bells())
    sender = _send_later(state, run, node, after=0.5)
    response, seconds = _pull(fleet, state, store, node)
    sender.join()
    assert len(response.messages_list) == 1  # the message stored while the poll waited
    assert 0.4 <= seconds < 4.0, seconds  # it waited for it, and not for the whole 6 s hold


def test_a_message_wakes_its_node_once_its_objects_are_uploaded_not_before(restored_superlink, link) -> None:
    fleet, _ = restored_superlink
    state, store, node, _, run = link
    sl.hold_empty_pulls(fleet_hold=6.0, serverapp_hold=0, bells=sl.Bells())
    sender = _send_later(state, run, node, after=0.2, upload_after=0.8)  # the objects come 0.8 s after it
    response, seconds = _pull(fleet, state, store, node)
    sender.join()
    assert len(response.messages_list) == 1 and 0.9 <= seconds < 4.0, seconds
    tree = response.message_object_trees[0]  # everything the node pulls next is there already
    assert all(store.get(t.object_id) for t in [tree, *tree.children])


def test_an_empty_poll_comes_back_empty_after_the_hold_and_a_message_for_another_node_does_not_end_it(
    restored_superlink, link
) -> None:
    fleet, _ = restored_superlink
    state, store, node, other, run = link
    sl.hold_empty_pulls(fleet_hold=1.0, serverapp_hold=0, bells=sl.Bells())
    sender = _send_later(state, run, other, after=0.2)
    response, seconds = _pull(fleet, state, store, node)
    sender.join()
    assert len(response.messages_list) == 0 and seconds >= 1.0  # held for the whole hold: not this node's message
    assert len(_pull(fleet, state, store, other)[0].messages_list) == 1  # the other node's poll finds it at once


def test_a_held_reply_pull_notices_a_node_that_missed_its_heartbeats_though_nothing_rang(
    restored_superlink, link
) -> None:
    _, runtime = restored_superlink
    state, run = link[0], link[4]
    sl.hold_empty_pulls(fleet_hold=0, serverapp_hold=6.0, bells=sl.Bells())
    brief = state.create_node("aid", "hospital-3", b"h" * 40, 10)
    state.activate_node(brief, 0.3)  # online for two intervals unless it beats: it will not
    message_id = _send(state, run, brief)
    task = next(t for t in state.get_tasks(statuses=[Status.RUNNING]) if t.run_id == run)  # the run's ServerApp
    started = time.monotonic()
    response = runtime.pull_messages(PullAppMessagesRequest(message_ids=[message_id]), state, task)
    seconds = time.monotonic() - started
    (reply,) = response.messages_list
    assert reply.error.code == ErrorCode.NODE_UNAVAILABLE  # the SuperLink answers for the node that went quiet
    assert seconds < 4.0, seconds  # noticed by a recheck within the 6 s hold: no bell rings for it


def test_an_executor_waiting_to_claim_a_serverapp_is_answered_when_a_run_is_submitted(restored_superlink, link) -> None:
    _, runtime = restored_superlink
    state = link[0]
    sl.hold_empty_pulls(fleet_hold=0, serverapp_hold=6.0, bells=sl.Bells())
    request = AcquireTaskRequest(supported_task_types=["serverapp"])

    def submit() -> None:
        time.sleep(0.5)
        state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")  # what `flwr run` asks

    submitter = threading.Thread(target=submit)
    submitter.start()
    started = time.monotonic()
    response = runtime.acquire_task(request, state)
    submitter.join()
    assert response.token and 0.4 <= time.monotonic() - started < 4.0


def test_a_bell_rung_between_a_look_and_the_wait_is_not_missed() -> None:
    bells = sl.Bells()
    seen = bells.count(sl.node_inbox(3))
    bells.ring(sl.node_inbox(3))  # the message came after the empty look, before the wait began
    assert bells.wait(sl.node_inbox(3), seen=seen, timeout=5.0)
    assert not bells.wait(sl.node_inbox(4), seen=bells.count(sl.node_inbox(4)), timeout=0.05)
