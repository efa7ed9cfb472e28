"""The guard on fedcare's one reach into Flower's internals: it fails, naming the symbol, when Flower changes."""

from __future__ import annotations

import http.server
import importlib
import signal
import socket
import threading
import time
from importlib.metadata import version

import grpc
import pytest

from fedcare import flower_internals as fi
from fedcare.flower_internals.guard import HEARTBEAT_MODULES


def test_the_installed_flower_is_the_pinned_one_and_every_patched_symbol_is_as_assumed() -> None:
    assert version("flwr") == fi.PINNED_FLWR, "re-read fedcare/flower_internals/ against the new Flower"
    problems = fi.check_pinned_flower()
    assert not problems, "fedcare/flower_internals/ no longer matches Flower:\n" + "\n".join(problems)


@pytest.fixture
def restored_flower():
    """Undo every patch after the test: other tests import the same Flower modules."""
    sci = importlib.import_module("flwr.supernode.start_client_internal")
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    saved = {name: dict(getattr(utils, name).__kwdefaults__) for name in fi._PULL_HELPERS}
    pull_and_store, make_invoker = sci._pull_and_store_message, sci._make_fleet_connection_retry_invoker
    push = sci._push_messages
    heartbeats = {name: importlib.import_module(name).HEARTBEAT_DEFAULT_INTERVAL for name in HEARTBEAT_MODULES}
    yield sci, utils
    sci.time, sci._pull_and_store_message, sci._push_messages = time, pull_and_store, push
    sci._make_fleet_connection_retry_invoker = make_invoker
    for name, defaults in saved.items():
        getattr(utils, name).__kwdefaults__.update(defaults)
    for name, interval in heartbeats.items():
        importlib.import_module(name).HEARTBEAT_DEFAULT_INTERVAL = interval


def test_tuned_waits_replace_the_fixed_sleeps_and_leave_other_sleeps_alone(restored_flower) -> None:
    sci, utils = restored_flower
    waits = fi.SuperNodeWaits(
        fleet_poll=0.01, fleet_poll_idle=0.02, reply_wait=0.001, pull_backoff=0.002, pull_backoff_cap=0.2
    )
    fi.tune_supernode_waits(waits)

    def timed(seconds: float) -> float:
        started = time.monotonic()
        sci.time.sleep(seconds)
        return time.monotonic() - started

    assert timed(fi.FLEET_POLL_SLEEP) < 0.5  # Flower's idle poll: 3 s
    assert timed(fi.REPLY_WAIT_SLEEP) < 0.2  # its reply wait: 0.5 s
    assert 0.15 <= timed(0.2) < 1.0  # any other sleep is untouched
    assert sci.time.monotonic() > 0  # the rest of `time` passes through
    for name in fi._PULL_HELPERS:
        defaults = getattr(utils, name).__kwdefaults__
        assert (defaults["initial_backoff"], defaults["backoff_cap"]) == (0.002, 0.2), name


def test_the_guard_names_a_changed_symbol(monkeypatch: pytest.MonkeyPatch) -> None:
    sci = importlib.import_module("flwr.supernode.start_client_internal")
    monkeypatch.setattr(sci, "time", object())
    problems = fi.check_pinned_flower()
    assert any("start_client_internal.time" in p for p in problems), problems
    with pytest.raises(fi.FlowerInternalsChanged, match="start_client_internal.time"):
        fi.tune_supernode_waits(fi.SuperNodeWaits())


def test_the_poll_is_fast_after_a_message_slow_when_idle_and_the_executor_is_told(
    restored_flower, monkeypatch: pytest.MonkeyPatch
) -> None:
    sci, _ = restored_flower
    received: list[int | None] = [None, 42]  # Flower's helper: the run id when a message came, else None
    monkeypatch.setattr(sci, "_pull_and_store_message", lambda **kwargs: received.pop(0))
    told = []
    waits = fi.SuperNodeWaits(fleet_poll=0.01, fleet_poll_idle=0.3, busy_window=0.2)
    fi.tune_supernode_waits(waits, on_message=lambda: told.append(True))

    def poll_seconds() -> float:
        started = time.monotonic()
        sci.time.sleep(fi.FLEET_POLL_SLEEP)
        return time.monotonic() - started

    assert sci._pull_and_store_message(state=None) is None and not told
    assert poll_seconds() >= 0.25  # a node just started is idle: the slow poll
    assert sci._pull_and_store_message(state=None) == 42 and told == [True]  # a message: the executor hears
    assert poll_seconds() < 0.2  # and the node polls fast again


def test_a_poll_the_superlink_held_is_not_followed_by_a_wait(restored_flower, monkeypatch: pytest.MonkeyPatch) -> None:
    sci, _ = restored_flower

    def held_empty_poll(**kwargs: object) -> None:
        time.sleep(0.4)  # fedcare's SuperLink held the poll (flower_internals/superlink.py), then had nothing
        return None

    monkeypatch.setattr(sci, "_pull_and_store_message", held_empty_poll)
    fi.tune_supernode_waits(fi.SuperNodeWaits(fleet_poll=0.01, fleet_poll_idle=0.3))
    assert sci._pull_and_store_message(state=None) is None
    started = time.monotonic()
    sci.time.sleep(fi.FLEET_POLL_SLEEP)
    assert time.monotonic() - started < 0.1  # the idle poll's 0.3 s had passed during the held poll


def test_the_node_announces_and_beats_at_the_tuned_heartbeat_interval(restored_flower) -> None:
    fi.tune_supernode_waits(fi.SuperNodeWaits(heartbeat_interval=12.0))
    # What the SuperNode sends in ActivateNode and each heartbeat, and what its sender waits by.
    assert all(importlib.import_module(name).HEARTBEAT_DEFAULT_INTERVAL == 12.0 for name in HEARTBEAT_MODULES)
    with pytest.raises(ValueError, match="refuses less than 10 s"):
        fi.tune_heartbeat(5.0)


class _RpcError(grpc.RpcError):
    """What the SuperNode's stub raises: a status code and the SuperLink's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _activation_refused() -> _RpcError:
    """The SuperLink's answer to ActivateNode for an unknown key, serialized by its own error translator."""
    from flwr.supercore.error import FlowerError
    from flwr.supercore.error.catalog import API_ERROR_MAP
    from flwr.supercore.error.grpc import _flower_error_to_grpc_json

    spec = API_ERROR_MAP[fi.ACTIVATION_REFUSED]
    details = _flower_error_to_grpc_json(FlowerError(fi.ACTIVATION_REFUSED, "no such key"), spec.public_message)
    return _RpcError(spec.status_code, details)


class _Stopped(Exception):
    pass


def test_a_removed_key_stops_the_node_at_once_and_a_refused_activation_after_the_patience(restored_flower) -> None:
    sci, _ = restored_flower
    refusals: list[fi.Refusal] = []

    def stop(refusal: fi.Refusal) -> None:
        refusals.append(refusal)
        raise _Stopped  # the real callback ends the process; Flower's own give-up must not run here

    fi.stop_when_refused(fi.SuperNodeWaits(refusal_patience=0.3, reconnect_cap=0.5), stop)
    invoker = sci._make_fleet_connection_retry_invoker()  # what Flower's _init_connection builds
    assert max(next(invoker.wait_gen_factory()) for _ in range(10)) <= 0.5

    refused = _activation_refused()
    assert invoker.should_giveup(refused) is False  # perhaps its own crashed session, still online: retry
    assert not refusals
    time.sleep(0.35)
    with pytest.raises(_Stopped):
        invoker.should_giveup(refused)
    (activation,) = refusals
    assert not activation.revoked and activation.seconds >= 0.3
    assert activation.flower_error == "[code: 2004] Failed to activate SuperNode."

    with pytest.raises(_Stopped):
        invoker.should_giveup(_RpcError(grpc.StatusCode.UNAUTHENTICATED, fi.REVOKED_DETAILS))
    assert refusals[-1].revoked
    # Anything else is Flower's own business (here: an unreachable SuperLink is retried).
    assert invoker.should_giveup(_RpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")) is False
    assert len(refusals) == 2


def test_a_task_left_behind_by_a_run_that_stopped_is_finished_as_failed(restored_flower, monkeypatch) -> None:
    """Flower 1.39 makes a message's task before pulling the message and leaves it unfinished when the run
    stops meanwhile (a coordinator crash); a claimed task would then wait hours for its objects."""
    from flwr.common.constant import Status, SubStatus
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    sci, _ = restored_flower
    state = InMemoryNodeState(ObjectStoreFactory().store())
    earlier = state.create_task(task_type="client_app", run_id=1)  # another message's task, still waiting

    def run_stopped_while_receiving(*, state: InMemoryNodeState) -> int | None:
        state.create_task(task_type="client_app", run_id=2)
        return None  # Flower: "Run ID 2 is not in `RUNNING` status. Ignoring message"

    monkeypatch.setattr(sci, "_pull_and_store_message", run_stopped_while_receiving)
    fi.tune_supernode_waits(fi.SuperNodeWaits())
    assert sci._pull_and_store_message(state=state) is None
    tasks = {t.run_id: t for t in state.get_tasks()}
    assert tasks[2].status.status == Status.FINISHED and tasks[2].status.sub_status == SubStatus.FAILED
    assert "the run stopped" in tasks[2].status.details
    assert tasks[1].task_id == earlier and tasks[1].status.status != Status.FINISHED


def test_a_clientapp_tells_its_parent_the_message_as_soon_as_the_node_hands_it_out(monkeypatch) -> None:
    """The parent can answer for a child killed while it still pulls the message's objects (issue 16: the node
    otherwise waited 60 s for Flower's task expiry); what it is told is enough to build the error reply."""
    from flwr.app import Error, Message, RecordDict
    from flwr.app.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse
    from flwr.supercore.task_identity import TaskIdentity

    stored = make_message(Metadata(11, "", 0, 22, "", "3", time.time(), 600.0, "train"), content=RecordDict())
    message_id = "ab" * 32

    class RuntimeClient:  # what the node's runtime API answers (runtime_handlers.pull_messages)
        def PullMessages(self, request: object) -> PullAppMessagesResponse:
            assert not told, "told before the node handed the message out"
            return PullAppMessagesResponse(
                messages_list=[message_to_proto(stored)], message_object_trees=[ObjectTree(object_id=message_id)]
            )

    told: list[fi.ServedMessage] = []
    monkeypatch.setattr(TaskIdentity, "_node_id", 22)  # set by pull_task_input from PullTaskInput, as in Flower
    monkeypatch.setattr(TaskIdentity, "_run_id", 11)
    client = RuntimeClient()
    fi.tell_when_pulled(client, told.append)
    assert client.PullMessages(None).messages_list
    (served,) = told
    assert (served.node_id, served.run_id) == (22, 11)
    original = message_from_proto(ProtoMessage.FromString(served.message_proto))
    reply = Message(Error(code=0, reason="killed"), reply_to=original)  # as answer_failed_task builds it
    assert reply.metadata.reply_to_message_id == message_id and reply.metadata.group_id == "3"


class _RuntimeServer(http.server.ThreadingHTTPServer):
    """A runtime API that answers every call with `status` (and an empty protobuf) and notes the paths."""

    def __init__(self, status: int, port: int = 0, *, answers: dict[str, bytes] | None = None) -> None:
        self.status, self.paths, self.answers = status, [], answers or {}  # answers: by the path's last part
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.paths.append(self.path)
                body = owner.answers.get(self.path.rsplit("/", 1)[-1], b"")
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def _served_message() -> fi.ServedMessage:
    from flwr.app import RecordDict
    from flwr.app.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.common.serde import message_to_proto

    message = make_message(Metadata(11, "ab" * 32, 0, 22, "", "3", time.time(), 600.0, "train"), RecordDict())
    return fi.ServedMessage(message_to_proto(message).SerializeToString(), node_id=22, run_id=11)


def test_a_parent_refused_by_the_runtime_api_raises_instead_of_interrupting_itself(monkeypatch) -> None:
    """A task whose token was revoked (its run stopped) is refused with 401; Flower's retry answers that by
    SIGINTing its own process, which ended the warm executor's parent (issue 16). The parent's answer raises."""
    import httpx

    server = _RuntimeServer(401)
    interrupted: list[int] = []
    monkeypatch.setattr("flwr.supercore.retry.http_retry.FORCE_EXIT_TIMEOUT_SECONDS", 0, raising=False)
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    try:
        api = fi.RuntimeApi(f"127.0.0.1:{server.server_address[1]}")
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            fi.answer_failed_task(api, "revoked-token", _served_message(), reason="killed")
    finally:
        signal.signal(signal.SIGINT, previous)
        server.shutdown()
    assert interrupted == []


def test_a_dead_serverapps_answer_waits_for_its_restarting_superlink() -> None:
    """restart_superlink kills the ServerApp while the SuperLink is down; answered only then, its run stayed
    RUNNING after the restart and hospitals waited for its messages until Flower expired the task (60 s)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[_RuntimeServer] = []
    timer = threading.Timer(4.0, lambda: servers.append(_RuntimeServer(200, port)))  # the SuperLink is back
    timer.start()
    try:
        assert fi.answer_failed_task(fi.RuntimeApi(f"127.0.0.1:{port}", serverapp=True), "t", None, reason="killed")
    finally:
        timer.join()
        for server in servers:
            server.shutdown()
    assert servers and any(path.endswith("/push-task-output") for path in servers[0].paths), servers[0].paths


def test_a_clientapp_killed_before_it_took_its_message_is_answered_by_the_parent_taking_it() -> None:
    """A child killed after its task started but before it took the message: Flower's claim expiry sends no
    error reply for a message never handed out, so the round waited out its timeout (600 s; the chaos soak's
    kill-clientapp). The parent takes the message with the child's token and answers it."""
    from flwr.app import RecordDict
    from flwr.app.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.common.serde import message_to_proto
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse

    stored = make_message(Metadata(11, "", 0, 22, "", "3", time.time(), 600.0, "train"), content=RecordDict())
    handed_out = PullAppMessagesResponse(
        messages_list=[message_to_proto(stored)], message_object_trees=[ObjectTree(object_id="ab" * 32)]
    )
    server = _RuntimeServer(200, answers={"pull-messages": handed_out.SerializeToString()})
    nothing_left = _RuntimeServer(200)  # the task never started: no message to hand out
    try:
        assert fi.answer_failed_task(fi.RuntimeApi(f"127.0.0.1:{server.server_address[1]}"), "t", None, reason="k")
        assert not fi.answer_failed_task(
            fi.RuntimeApi(f"127.0.0.1:{nothing_left.server_address[1]}"), "t", None, reason="killed"
        )
    finally:
        server.shutdown()
        nothing_left.shutdown()
    names = [path.rsplit("/", 1)[-1] for path in server.paths]
    assert names[0] == "pull-messages" and "push-messages" in names and names[-1] == "push-task-output", names
    assert [path.rsplit("/", 1)[-1] for path in nothing_left.paths] == ["pull-messages"]
