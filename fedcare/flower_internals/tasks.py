"""Claiming and running tasks from a runtime API, for the warm executors: a SuperNode's ClientApp tasks, or a
SuperLink's ServerApp tasks. The child runs Flower's own `run_clientapp` / `flwr-serverapp`, so it unpacks
and loads the run's app exactly as Flower would; the parent learns which message a child serves, so it can
still answer when that child dies."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedcare.flower_internals.fab_install import installed_once
from fedcare.flower_internals.flat_records import flatten_record_dicts
from fedcare.flower_internals.log_flush import tune_serverapp_log_flush
from fedcare.flower_internals.supernode import SuperNodeWaits, tune_object_pull_backoff

SERVERAPP_ANSWER_PATIENCE = 60.0  # s a dead ServerApp's answer may wait for its SuperLink: Flower's task expiry


@dataclass(frozen=True)
class RuntimeApi:
    """Where a warm executor claims tasks: a SuperNode's runtime API on loopback (plain HTTP, as Flower's own
    SuperExec uses it), or the SuperLink's (`ca_certificate`: TLS) for ServerApp tasks."""

    address: str
    serverapp: bool = False  # which tasks: the SuperLink's ServerApps, or a SuperNode's ClientApps
    ca_certificate: str | None = None
    # The SuperExec auth secret the runtime API's server was started with (`--superexec-auth-secret-file`):
    # task claims are then signed with it, as Flower's own SuperExec signs them, and unsigned ones refused.
    superexec_secret: bytes | None = field(default=None, repr=False)

    def client(self, token: str | None = None, *, retries: int | None = None, patience: float | None = None) -> object:
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        component = "SuperExec" if token is None else ("flwr-serverapp" if self.serverapp else "flwr-clientapp")
        interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        elif self.superexec_secret is not None:
            from flwr.supercore.superexec.run_superexec import _SUPEREXEC_AUTH_METHODS

            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=self.superexec_secret, protected_methods=_SUPEREXEC_AUTH_METHODS
                )
            )
        retry = make_simple_http_retry_invoker()
        if retries is not None:
            retry.max_tries = retries
        if patience is not None:
            retry.max_time = patience
        if token is not None:  # only a warm executor's parent makes these (answer_failed_task)
            retry.should_giveup = _refusal_raises(retry.should_giveup)
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.ca_certificate is None,
            root_certificates=self.ca_certificate,
            interceptors=interceptors,
            retry_invoker=retry,
        )

    def acquire_task(self, client: object) -> str | None:
        """Claim the oldest pending task of this kind; its token, or None when there is none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        kind = TaskType.SERVER_APP if self.serverapp else TaskType.CLIENT_APP
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[kind]))  # type: ignore[attr-defined]
        return str(res.token) if res.HasField("task") and res.token else None


def _refusal_raises(giveup: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
    """Flower's HTTP retry answers a 401 (a task token revoked: its run stopped, its task was finished) by
    SIGINTing its own process, which ends a one-shot `flwr-clientapp` the way Ctrl-C would. In a warm executor's
    parent that ended the executor (issue 16): its node then served nothing until it was restarted and warm
    again (27 s at load 10). Here the refusal raises instead, and the parent logs that it could not answer."""
    import httpx

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return bool(giveup(exc))

    return should_giveup


@dataclass(frozen=True)
class ServedMessage:
    """What the executor's parent needs to answer for a ClientApp that died: the message (no content), and
    the node and run it belongs to."""

    message_proto: bytes
    node_id: int
    run_id: int


def run_task(
    api: RuntimeApi,
    token: str,
    *,
    parent_pid: int,
    on_input: Callable[[ServedMessage], None],
    on_replied: Callable[[], None],
) -> int:
    """Run Flower's own `flwr-serverapp` / `run_clientapp` for one claimed task in this process; its exit code.

    For a ClientApp, `on_input` hears which message it serves as soon as it is pulled and `on_replied` that
    the reply was pushed: between the two, a death of this process leaves the SuperNode waiting for a
    reply only the parent can now send (`answer_failed_task`).
    """
    # Both sides meet objects that are not there yet: the ServerApp pulls replies the SuperLink lists before
    # their upload ends, and a ClientApp's task is claimable while its SuperNode still pulls the message's
    # objects (`_pull_and_store_message` creates the task first). Flower's 1 s back-off, doubling, then
    # cost a message 1-4 s (py-spy: `pull_with_retries` waiting in 4.2 of a child's 4.4 s).
    tune_object_pull_backoff(initial=SuperNodeWaits.pull_backoff, cap=SuperNodeWaits.pull_backoff_cap)
    flatten_record_dicts()  # a message's content travels as one object (flat_records.py)
    try:
        if api.serverapp:
            sys.argv = ["flwr-serverapp", "--runtime-api-address", api.address, "--token", token]
            sys.argv += ["--parent-pid", str(parent_pid)]
            sys.argv += ["--insecure"] if api.ca_certificate is None else ["--root-certificates", api.ca_certificate]
            tune_serverapp_log_flush()  # Flower's flush sleeps a fixed second at the end of every run
            importlib.import_module("flwr.superlink.cli.flwr_serverapp").flwr_serverapp()
        else:
            _run_clientapp(api, token, parent_pid=parent_pid, on_input=on_input, on_replied=on_replied)
    except SystemExit as done:  # flwr_exit ends every run this way
        return done.code if isinstance(done.code, int) else 1
    return 0


def _run_clientapp(
    api: RuntimeApi,
    token: str,
    *,
    parent_pid: int,
    on_input: Callable[[ServedMessage], None],
    on_replied: Callable[[], None],
) -> None:
    from flwr.supernode.runtime import run_clientapp as rc

    pull, push = rc.pull_task_input, rc.push_message
    rc.install_from_fab = installed_once(rc.install_from_fab)  # once per node, not per message (fab_install.py)

    def pull_and_tell(client):  # type: ignore[no-untyped-def]
        tell_when_pulled(client, on_input)
        return pull(client)

    def push_and_tell(client, message, context):  # type: ignore[no-untyped-def]
        push(client, message, context)
        on_replied()

    rc.pull_task_input, rc.push_message = pull_and_tell, push_and_tell
    rc.run_clientapp(runtime_api_address=api.address, token=token, insecure=True, parent_pid=parent_pid)


def tell_when_pulled(client: Any, on_input: Callable[[ServedMessage], None]) -> None:
    """Make `client` (a ClientApp's runtime client) tell `on_input` which message it serves as soon as the
    node hands the message out, before its objects are pulled.

    From then on the node counts the message as taken and waits for its reply, so a child killed while it
    pulls the objects must be answered by the parent. Told only once `pull_task_input` returned, such a kill
    left the node waiting for Flower's task expiry (60 s): the chaos soak's kill-clientapp trial, once
    children started fast enough to be killed there.
    """
    from flwr.supercore.task_identity import TaskIdentity

    pull_messages = client.PullMessages

    def pull_messages_and_tell(request: Any) -> Any:
        response = pull_messages(request)
        served = served_message(response, node_id=int(TaskIdentity.node_id), run_id=int(TaskIdentity.run_id))
        if served is not None:
            on_input(served)
        return response

    client.PullMessages = pull_messages_and_tell


def served_message(response: Any, *, node_id: int, run_id: int) -> ServedMessage | None:
    """The message a PullMessages answer hands out (metadata only: the content comes as objects), if any."""
    if not response.messages_list:
        return None
    proto = type(response.messages_list[0])()
    proto.CopyFrom(response.messages_list[0])
    proto.metadata.message_id = response.message_object_trees[0].object_id
    return ServedMessage(proto.SerializeToString(), node_id, run_id)


def _take_unserved_message(client: Any) -> ServedMessage | None:
    """The message of a task whose ClientApp died after the node started the task but before it took the message.

    The node then counts the task as running and the message as not yet handed out: when the claim expires, Flower
    fails the task but sends an error reply only for messages handed out, so the SuperNode waited for a reply
    until the round's timeout (600 s by default; the chaos soak's kill-clientapp, once children started fast).
    Taking the message with the dead child's token hands it out, so the parent's error reply answers it."""
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest

    response = client.PullMessages(PullAppMessagesRequest())
    if not response.messages_list:
        return None
    metadata = response.messages_list[0].metadata
    return served_message(response, node_id=int(metadata.dst_node_id), run_id=int(metadata.run_id))


def answer_failed_task(api: RuntimeApi, token: str, served: ServedMessage | None, *, reason: str) -> bool:
    """Answer for a task whose process died, naming `reason`; False when nothing can be answered.

    A ClientApp's message gets an error reply, then the task is marked failed (without the reply the
    SuperNode would wait for one until Flower expires the task's heartbeat, 60 s); a ServerApp's task is
    marked failed, which ends its run with the reason. For a ClientApp that died before it took its message,
    the parent takes it with the child's token (`_take_unserved_message`); when the node has none to hand out
    (the task was never started), Flower offers the task again when its claim expires.
    """
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.supernode.runtime import run_clientapp as rc

    # A ServerApp's answer ends its run on the SuperLink; a run left RUNNING kept hospitals waiting for its
    # messages until Flower expired its task (60 s). When the SuperLink died with it (restarted meanwhile, on
    # its database, tokens included), the answer waits for it to come back.
    patience = SERVERAPP_ANSWER_PATIENCE if api.serverapp else None
    client = api.client(token, retries=None if api.serverapp else 3, patience=patience)
    try:
        if served is None and not api.serverapp:
            served = _take_unserved_message(client)
            if served is None:
                return False
        if served is not None:
            original = message_from_proto(ProtoMessage.FromString(served.message_proto))
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=original)
            context = Context(
                run_id=served.run_id, node_id=served.node_id, node_config={}, state=RecordDict(), run_config={}
            )
            rc.push_message(client, reply, context)
        rc.push_task_output(client=client, context=None, sub_status=SubStatus.FAILED, details=reason)
    finally:
        client.close()  # type: ignore[attr-defined]
    return True
