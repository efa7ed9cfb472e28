"""The guard: what fedcare assumes of the pinned Flower, symbol by symbol (`check_pinned_flower`)."""

from __future__ import annotations

import importlib
import inspect
import re
import time
from importlib.metadata import version
from types import ModuleType

PINNED_FLWR = "1.39.0"
HEARTBEAT_MODULES = (
    "flwr.client.grpc_rere_client.connection",
    "flwr.supercore.heartbeat",
)  # HEARTBEAT_DEFAULT_INTERVAL
SUPERLINK_MIN_HEARTBEAT = 10  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL: the SuperLink refuses a shorter interval
OFFLINE_AFTER = 2  # HEARTBEAT_PATIENCE: the SuperLink marks a node offline after this many intervals without a beat
REVOKED_DETAILS = "Invalid node ID"  # the SuperLink's node-auth interceptor, to a key it no longer knows
ACTIVATION_REFUSED = 2004  # ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED: unknown key, or its last session still online
FLEET_POLL_SLEEP = 3  # start_client_internal: `time.sleep(3)` when PullMessages returned nothing
REPLY_WAIT_SLEEP = 0.5  # start_client_internal: `time.sleep(0.5)` twice, waiting for the ClientApp's reply
_SLEEP_SITES = {f"time.sleep({FLEET_POLL_SLEEP})": 1, f"time.sleep({REPLY_WAIT_SLEEP})": 2}
_PULL_HELPERS = ("pull_objects", "pull_and_inflate_object_from_tree")  # inflatable_utils, keyword defaults


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower is not the one fedcare's adapter was written for."""


def _modules() -> dict[str, ModuleType]:
    # By full name: `flwr.supernode.cli` re-exports a function under its module's name.
    return {
        name.rsplit(".", 1)[1]: importlib.import_module(name)
        for name in (
            "flwr.supernode.start_client_internal",
            "flwr.supercore.inflatable.inflatable_utils",
            "flwr.supernode.cli.flower_supernode",
            "flwr.supernode.runtime.run_clientapp",
            *HEARTBEAT_MODULES,
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
    problems += _check_reply_path(sci, source)
    if "task_id = state.create_task(" not in source or "except RunNotRunningException" not in source:
        problems.append("flwr.supernode.start_client_internal._pull_and_store_message: task no longer made as assumed")
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
    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
    if "/flwr.proto.Runtime/AcquireTask" not in getattr(superexec, "_SUPEREXEC_AUTH_METHODS", ()):
        problems.append(
            "flwr.supercore.superexec.run_superexec._SUPEREXEC_AUTH_METHODS: missing or without AcquireTask"
        )
    retry = importlib.import_module("flwr.supercore.retry.http_retry")
    if "os.kill(os.getpid(), signal.SIGINT)" not in inspect.getsource(retry) or not callable(
        getattr(retry.make_simple_http_retry_invoker(), "should_giveup", None)
    ):
        problems.append("flwr.supercore.retry.http_retry: a 401 no longer SIGINTs the process via should_giveup")
    if not callable(getattr(importlib.import_module("flwr.supercore.interceptors"), "SuperExecAuthHttpInterceptor", 0)):
        problems.append("flwr.supercore.interceptors.SuperExecAuthHttpInterceptor: missing")
    problems += _check_liveness(mods)
    problems += _check_serverapp_log_flush()
    problems += _check_long_polls()
    problems += _check_flat_records()
    rc = mods["run_clientapp"]
    for name in ("run_clientapp", "pull_task_input", "push_message", "push_task_output", "install_from_fab"):
        if not callable(getattr(rc, name, None)):
            problems.append(f"flwr.supernode.runtime.run_clientapp.{name}: missing")
    if callable(getattr(rc, "run_clientapp", None)):
        body = inspect.getsource(rc.run_clientapp)
        calls = ("pull_task_input(client)", "push_message(client, reply_message, context)")
        for call in (*calls, "install_from_fab(fab.content, skip_prompt=True)"):  # the last: fab_install.py
            if call not in body:
                problems.append(f"flwr.supernode.runtime.run_clientapp.run_clientapp: no longer calls `{call}`")
    if callable(getattr(rc, "pull_task_input", None)):  # tasks._run_clientapp tells the parent from PullMessages
        body = inspect.getsource(rc.pull_task_input)
        told = ("TaskIdentity.node_id = ", "client.PullMessages(", "message_object_trees[0]")
        if any(part not in body for part in told) or body.index(told[0]) > body.index(told[1]):
            problems.append("run_clientapp.pull_task_input: no longer sets TaskIdentity, then calls PullMessages")
    return problems


def _check_reply_path(sci: ModuleType, source: str) -> list[str]:
    """What the reply gate assumes: the main loop hands `_push_messages` its state by keyword, `_push_messages`
    asks that state for the replies to send (and deletes each once sent), the node's state marks the replies
    it returns as retrieved, and the object store holds b"" for an object that has not arrived."""
    problems = []
    called = re.search(r"_push_messages\(\s*state=state,\s*object_store=store,\s*send=send,\s*push_object=", source)
    if not callable(getattr(sci, "_push_messages", None)) or called is None:
        problems.append("flwr.supernode.start_client_internal._push_messages: no longer called as assumed")
    else:
        body = inspect.getsource(sci._push_messages)
        if "state.get_messages(is_reply=True)" not in body or "state.delete_messages(" not in body:
            problems.append("start_client_internal._push_messages: no longer reads replies through the state")
    state = importlib.import_module("flwr.supernode.nodestate.in_memory_nodestate").InMemoryNodeState
    if "entry.is_retrieved = True" not in inspect.getsource(state.get_messages):
        problems.append("InMemoryNodeState.get_messages: no longer marks the messages it returns as retrieved")
    store = importlib.import_module("flwr.supercore.object_store.in_memory_object_store").InMemoryObjectStore
    if 'content=b"",' not in inspect.getsource(store.preregister):
        problems.append('InMemoryObjectStore.preregister: an object not yet arrived is no longer stored as b""')
    try:
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree  # noqa: F401
        from flwr.supercore.object_store import NoObjectInStoreError  # noqa: F401
    except ImportError as exc:
        problems.append(f"reply gate: {exc}")
    return problems


def _check_serverapp_log_flush() -> list[str]:
    """What `log_flush.py` assumes: the ServerApp's runner starts one uploader thread, flushes it, then stops it,
    through names it looks up in its own module, and the uploader returns on a None it takes from the queue."""
    problems = []
    runner = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    source = inspect.getsource(runner)
    for use in (
        "log_uploader = start_log_uploader(",
        "flush_logs(log_queue)",
        "stop_log_uploader(log_queue, log_uploader)",
    ):
        if source.count(use) != 1:
            problems.append(f"flwr.superlink.runtime.run_serverapp: expected one `{use}`, found {source.count(use)}")
    logger = importlib.import_module("flwr.supercore.logger")
    if "if msg is None:" not in inspect.getsource(logger._log_uploader):
        problems.append("flwr.supercore.logger._log_uploader: no longer stops on a None from its queue")
    return problems


def _check_long_polls() -> list[str]:
    """What `superlink.py` assumes: both pull handlers are looked up on their module at each call, with these
    parameters, and every stored message goes through `store_message_and_object_tree` of the two LinkStates."""
    problems = []
    handlers = {
        "flwr.server.superlink.fleet.message_handler.message_handler": ["request", "state", "store"],
        "flwr.superlink.servicer.runtime.runtime_handlers": ["request", "state", "task"],
    }
    for name, params in handlers.items():
        pull = getattr(importlib.import_module(name), "pull_messages", None)
        if not callable(pull) or list(inspect.signature(pull).parameters) != params:
            problems.append(f"{name}.pull_messages: missing, or its parameters are no longer {params}")
        elif "state.store_message_and_object_tree(" not in inspect.getsource(importlib.import_module(name)):
            problems.append(f"{name}: no longer stores messages through `state.store_message_and_object_tree(`")
    servicer = importlib.import_module("flwr.server.superlink.fleet.grpc_rere.fleet_servicer")
    if "message_handler.pull_messages(" not in inspect.getsource(servicer.FleetServicer.PullMessages):
        problems.append("FleetServicer.PullMessages: no longer calls `message_handler.pull_messages(`")
    main = importlib.import_module("flwr.superlink.main")
    if getattr(main, "_RUNTIME_HANDLERS", None) is not importlib.import_module(next(reversed(handlers))):
        problems.append("flwr.superlink.main._RUNTIME_HANDLERS: no longer the runtime_handlers module")
    for module, cls in (
        ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState"),
        ("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState"),
    ):
        state = getattr(importlib.import_module(module), cls, None)
        store = getattr(state, "store_message_and_object_tree", None)
        if not callable(store) or "reply_to_message_id" not in inspect.getsource(store):
            problems.append(f"{cls}.store_message_and_object_tree: missing, or no longer tells replies apart")
        put = getattr(state, "store_object", None)
        if not callable(put) or list(inspect.signature(put).parameters)[1:4] != ["run_id", "session_id", "object_id"]:
            problems.append(f"{cls}.store_object: missing, or no longer (run_id, session_id, object_id, content)")
    return problems


def _check_flat_records() -> list[str]:
    """What `flat_records.py` assumes: Flower's protobuf form of a whole RecordDict, the object header helpers,
    and that an object's class comes from the registry by the type name in its header."""
    problems = []
    serde = importlib.import_module("flwr.common.serde")
    for name in ("recorddict_to_proto", "recorddict_from_proto"):
        if not callable(getattr(serde, name, None)):
            problems.append(f"flwr.common.serde.{name}: missing")
    inflatable = importlib.import_module("flwr.supercore.inflatable.inflatable_object")
    for name in ("add_header_to_object_body", "get_object_body"):
        if not callable(getattr(inflatable, name, None)):
            problems.append(f"flwr.supercore.inflatable.inflatable_object.{name}: missing")
    registry = getattr(
        importlib.import_module("flwr.supercore.inflatable.inflatable_utils"), "inflatable_class_registry", {}
    )
    from flwr.app import RecordDict

    if registry.get("RecordDict") is not RecordDict or "(obj.children or {})" not in inspect.getsource(inflatable):
        problems.append("flwr.supercore.inflatable: objects no longer found by type name, or headers not by children")
    return problems


def _check_liveness(mods: dict[str, ModuleType]) -> list[str]:
    """What the heartbeat and refusal patches assume."""
    problems = []
    constant = importlib.import_module("flwr.common.constant")
    if (constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_PATIENCE) != (SUPERLINK_MIN_HEARTBEAT, OFFLINE_AFTER):
        problems.append("flwr.common.constant: HEARTBEAT_MIN_INTERVAL or HEARTBEAT_PATIENCE changed")
    uses = {"connection": "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL", "heartbeat": "HEARTBEAT_DEFAULT_INTERVAL -"}
    for name, use in uses.items():
        if not hasattr(mods[name], "HEARTBEAT_DEFAULT_INTERVAL") or use not in inspect.getsource(mods[name]):
            problems.append(f"{mods[name].__name__}: no longer reads HEARTBEAT_DEFAULT_INTERVAL as `{use}`")
    sci = mods["start_client_internal"]
    make = getattr(sci, "_make_fleet_connection_retry_invoker", None)
    if not callable(make) or "_make_fleet_connection_retry_invoker(" not in inspect.getsource(sci._init_connection):
        problems.append(
            "flwr.supernode.start_client_internal._make_fleet_connection_retry_invoker: not used as assumed"
        )
    elif not {"should_giveup", "wait_gen_factory"} <= vars(make()).keys():
        problems.append("flwr.supercore.retry.RetryInvoker: no should_giveup/wait_gen_factory attributes")
    auth = importlib.import_module("flwr.server.superlink.fleet.grpc_rere.node_auth_server_interceptor")
    if f'StatusCode.UNAUTHENTICATED, "{REVOKED_DETAILS}"' not in inspect.getsource(auth):
        problems.append(
            f"node_auth_server_interceptor: a removed key no longer gets UNAUTHENTICATED {REVOKED_DETAILS!r}"
        )
    codes = importlib.import_module("flwr.supercore.error")
    if getattr(codes.ApiErrorCode, "FLEET_NODE_ACTIVATION_FAILED", None) != ACTIVATION_REFUSED:
        problems.append(
            f"flwr.supercore.error.ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED is no longer {ACTIVATION_REFUSED}"
        )
    return problems


def _require_pinned() -> None:
    if problems := check_pinned_flower():
        raise FlowerInternalsChanged(
            "fedcare's Flower adapter (fedcare/flower_internals/) does not match the installed Flower:\n- "
            + "\n- ".join(problems)
        )
