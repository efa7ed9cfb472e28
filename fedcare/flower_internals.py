"""Every place fedcare reaches past Flower's public API, for the pinned flwr 1.39.0, in one module.

Flower 1.39 spends a round's seconds in fixed waits (FIELD-NOTES, "Where a 1.39 message exchange spends
its seconds") and starts a fresh `flwr-clientapp` process per message. fedcare does not fork Flower;
instead, at the hospital:

* the SuperNode runs in a fedcare process that retunes its fixed sleeps (`time.sleep(3)` between idle
  fleet polls, `time.sleep(0.5)` while it waits for a ClientApp's reply) and the object-pull back-off
  (1 s doubling to 10 s) before it calls Flower's own `flower_supernode()` main;
* the warm executor claims ClientApp tasks from the SuperNode's runtime API and runs Flower's own
  `run_clientapp` in a forked child, learning the message it serves so it can still answer when that
  child dies.

`check_pinned_flower()` says, symbol by symbol, what of this no longer holds; `tests/fedcare/
test_flower_internals.py` fails on it, and `tune_supernode_waits` refuses to start on it, so an upgraded
Flower fails loudly instead of silently going slow (or worse). Nothing here may import `client`,
`common` or `server`: the warm executor imports this module before it forks, and Flower's `load_app`
would run a pre-imported copy instead of the app the run ships.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from types import ModuleType

PINNED_FLWR = "1.39.0"
FLEET_POLL_SLEEP = 3  # start_client_internal: `time.sleep(3)` when PullMessages returned nothing
REPLY_WAIT_SLEEP = 0.5  # start_client_internal: `time.sleep(0.5)` twice, waiting for the ClientApp's reply
_SLEEP_SITES = {f"time.sleep({FLEET_POLL_SLEEP})": 1, f"time.sleep({REPLY_WAIT_SLEEP})": 2}
_PULL_HELPERS = ("pull_objects", "pull_and_inflate_object_from_tree")  # inflatable_utils, keyword defaults


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower is not the one fedcare's adapter was written for."""


@dataclass(frozen=True)
class SuperNodeWaits:
    """The SuperNode's waits, in seconds (Flower 1.39's fixed values in brackets).

    fleet_poll: between empty PullMessages to the SuperLink while busy, i.e. within `busy_window` seconds
    of the last message [3]; fleet_poll_idle: after that. Each poll costs the SuperLink about 4 ms of CPU
    (TLS, node authentication): 10 hospitals at 0.05 s keep 60 % of one of its cores busy, at 1 s 5 %
    (bench/poll_cost.py, docs/benchmarks.md). Runs keep a node busy, so rounds see the fast poll and an
    idle federation the slow one; only a run's first message waits up to fleet_poll_idle.
    reply_wait: between checks for the ClientApp's reply [0.5]; local, costs nothing measurable.
    pull_backoff, pull_backoff_cap: first and largest back-off when a message's objects are not uploaded
    yet [1, 10]; a fast poll meets that often, because the SuperLink hands a message out before its upload ends.
    """

    fleet_poll: float = 0.05
    fleet_poll_idle: float = 1.0
    busy_window: float = 30.0
    reply_wait: float = 0.01
    pull_backoff: float = 0.02
    pull_backoff_cap: float = 0.5


def _modules() -> dict[str, ModuleType]:
    # By full name: `flwr.supernode.cli` re-exports a function under its module's name.
    return {
        name.rsplit(".", 1)[1]: importlib.import_module(name)
        for name in (
            "flwr.supernode.start_client_internal",
            "flwr.supercore.inflatable.inflatable_utils",
            "flwr.supernode.cli.flower_supernode",
            "flwr.supernode.runtime.run_clientapp",
        )
    }


def check_pinned_flower() -> list[str]:
    """What this module assumes of Flower and no longer holds; empty when all is as pinned."""
    problems: list[str] = []
    installed = version("flwr")
    if installed != PINNED_FLWR:
        problems.append(f"flwr is {installed}, the adapter was written for {PINNED_FLWR}: re-read every symbol below")
    try:
        mods = _modules()
    except ImportError as exc:
        return [*problems, f"import failed: {exc}"]
    sci = mods["start_client_internal"]
    if getattr(sci, "time", None) is not time:
        problems.append("flwr.supernode.start_client_internal.time: no longer the `time` module it sleeps through")
    source = inspect.getsource(sci)
    if "run_id = _pull_and_store_message(" not in source or not callable(getattr(sci, "_pull_and_store_message", 0)):
        problems.append("flwr.supernode.start_client_internal._pull_and_store_message: no longer called as assumed")
    for site, count in _SLEEP_SITES.items():
        if source.count(site) != count:
            problems.append(
                f"flwr.supernode.start_client_internal: expected {count} `{site}`, found {source.count(site)}"
            )
    for name in _PULL_HELPERS:
        defaults = getattr(getattr(mods["inflatable_utils"], name, None), "__kwdefaults__", None) or {}
        if not {"initial_backoff", "backoff_cap"} <= defaults.keys():
            problems.append(f"flwr.supercore.inflatable.inflatable_utils.{name}: no initial_backoff/backoff_cap")
    if not callable(getattr(mods["flower_supernode"], "flower_supernode", None)):
        problems.append("flwr.supernode.cli.flower_supernode.flower_supernode: missing")
    if not callable(getattr(importlib.import_module("flwr.superlink.cli.flwr_serverapp"), "flwr_serverapp", None)):
        problems.append("flwr.superlink.cli.flwr_serverapp.flwr_serverapp: missing")
    rc = mods["run_clientapp"]
    for name in ("run_clientapp", "pull_task_input", "push_message", "push_task_output"):
        if not callable(getattr(rc, name, None)):
            problems.append(f"flwr.supernode.runtime.run_clientapp.{name}: missing")
    if callable(getattr(rc, "run_clientapp", None)):
        body = inspect.getsource(rc.run_clientapp)
        for call in ("pull_task_input(client)", "push_message(client, reply_message, context)"):
            if call not in body:
                problems.append(f"flwr.supernode.runtime.run_clientapp.run_clientapp: no longer calls `{call}`")
    return problems


def _require_pinned() -> None:
    if problems := check_pinned_flower():
        raise FlowerInternalsChanged(
            "fedcare's Flower adapter (fedcare/flower_internals.py) does not match the installed Flower:\n- "
            + "\n- ".join(problems)
        )


# ---------------------------------------------------------------- the SuperNode's waits


class _RetunedSleeps:
    """Stands in for the `time` module inside start_client_internal: the two fixed sleeps become the
    configured waits (the idle poll fast or slow by how long ago the last message came); every other call
    goes to `time` itself."""

    def __init__(self, waits: SuperNodeWaits) -> None:
        self.waits, self.last_message = waits, time.monotonic()

    def sleep(self, seconds: float) -> None:
        if float(seconds) == FLEET_POLL_SLEEP:
            busy = time.monotonic() - self.last_message < self.waits.busy_window
            seconds = self.waits.fleet_poll if busy else self.waits.fleet_poll_idle
        elif seconds == REPLY_WAIT_SLEEP:
            seconds = self.waits.reply_wait
        time.sleep(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def tune_supernode_waits(waits: SuperNodeWaits, *, on_message: Callable[[], None] | None = None) -> None:
    """Retune this process's SuperNode waits; call before `run_flower_supernode`.

    `on_message` is called each time the SuperNode has stored a message (its task is then claimable): the
    warm executor is told at once instead of polling the runtime API.
    """
    _require_pinned()
    sci = _modules()["start_client_internal"]
    sleeps = _RetunedSleeps(waits)
    pull_and_store = sci._pull_and_store_message

    def pulled(*args: object, **kwargs: object) -> int | None:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            sleeps.last_message = time.monotonic()
            if on_message is not None:
                on_message()
        return run_id

    sci.time, sci._pull_and_store_message = sleeps, pulled
    tune_object_pull_backoff(initial=waits.pull_backoff, cap=waits.pull_backoff_cap)


def tune_object_pull_backoff(*, initial: float, cap: float) -> None:
    # This module alone: `_modules()` would load the SuperNode's SQL state (SQLAlchemy, 0.5-2 s) into every child.
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    for name in _PULL_HELPERS:
        defaults = getattr(utils, name).__kwdefaults__
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap


def run_flower_supernode(argv: list[str]) -> None:
    """Flower's own `flower-supernode` main, with `argv` as its command line."""
    sys.argv = ["flower-supernode", *argv]
    _modules()["flower_supernode"].flower_supernode()


# ---------------------------------------------------------------- tasks (the warm executors)


@dataclass(frozen=True)
class RuntimeApi:
    """Where a warm executor claims tasks: a SuperNode's runtime API on loopback (plain HTTP, as Flower's own
    SuperExec uses it), or the SuperLink's (`ca_certificate`: TLS) for ServerApp tasks."""

    address: str
    serverapp: bool = False  # which tasks: the SuperLink's ServerApps, or a SuperNode's ClientApps
    ca_certificate: str | None = None

    def client(self, token: str | None = None, *, retries: int | None = None) -> object:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        component = "SuperExec" if token is None else ("flwr-serverapp" if self.serverapp else "flwr-clientapp")
        interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        retry = make_simple_http_retry_invoker()
        if retries is not None:
            retry.max_tries = retries
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
    try:
        if api.serverapp:
            sys.argv = ["flwr-serverapp", "--runtime-api-address", api.address, "--token", token]
            sys.argv += ["--parent-pid", str(parent_pid)]
            sys.argv += ["--insecure"] if api.ca_certificate is None else ["--root-certificates", api.ca_certificate]
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
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supernode.runtime import run_clientapp as rc

    pull, push = rc.pull_task_input, rc.push_message

    def pull_and_tell(client):  # type: ignore[no-untyped-def]
        message, context, run, fab = pull(client)
        proto = message_to_proto(remove_content_from_message(message)).SerializeToString()
        on_input(ServedMessage(proto, int(context.node_id), int(context.run_id)))
        return message, context, run, fab

    def push_and_tell(client, message, context):  # type: ignore[no-untyped-def]
        push(client, message, context)
        on_replied()

    rc.pull_task_input, rc.push_message = pull_and_tell, push_and_tell
    rc.run_clientapp(runtime_api_address=api.address, token=token, insecure=True, parent_pid=parent_pid)


def answer_failed_task(api: RuntimeApi, token: str, served: ServedMessage | None, *, reason: str) -> bool:
    """Answer for a task whose process died, naming `reason`; False when nothing can be answered.

    A ClientApp's message gets an error reply, then the task is marked failed (without the reply the
    SuperNode would wait for one until Flower expires the task's heartbeat, 60 s); a ServerApp's task is
    marked failed, which ends its run with the reason. A ClientApp that died before it pulled its
    message cannot be answered: Flower offers the task again when its claim expires.
    """
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.supernode.runtime import run_clientapp as rc

    if served is None and not api.serverapp:
        return False
    client = api.client(token, retries=3)
    try:
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
