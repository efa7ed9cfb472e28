"""The Flower fedcare's adapter was written for, and a symbol-by-symbol check that it is still the one installed.

An upgraded Flower must fail loudly (this check, its test, and `tune_supernode_waits` refusing to start)
instead of silently going slow, or worse.
"""

from __future__ import annotations

import importlib
import inspect
import time
from importlib.metadata import version
from types import ModuleType

PINNED_FLWR = "1.39.0"
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
    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
    if "/flwr.proto.Runtime/AcquireTask" not in getattr(superexec, "_SUPEREXEC_AUTH_METHODS", ()):
        problems.append(
            "flwr.supercore.superexec.run_superexec._SUPEREXEC_AUTH_METHODS: missing or without AcquireTask"
        )
    if not callable(getattr(importlib.import_module("flwr.supercore.interceptors"), "SuperExecAuthHttpInterceptor", 0)):
        problems.append("flwr.supercore.interceptors.SuperExecAuthHttpInterceptor: missing")
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
