"""The guard on fedcare's one reach into Flower's internals: it fails, naming the symbol, when Flower changes."""

from __future__ import annotations

import importlib
import time
from importlib.metadata import version

import pytest

from fedcare import flower_internals as fi


def test_the_installed_flower_is_the_pinned_one_and_every_patched_symbol_is_as_assumed() -> None:
    assert version("flwr") == fi.PINNED_FLWR, "re-read fedcare/flower_internals.py against the new Flower"
    problems = fi.check_pinned_flower()
    assert not problems, "fedcare/flower_internals.py no longer matches Flower:\n" + "\n".join(problems)


@pytest.fixture
def restored_flower():
    """Undo every patch after the test: other tests import the same Flower modules."""
    sci = importlib.import_module("flwr.supernode.start_client_internal")
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    saved = {name: dict(getattr(utils, name).__kwdefaults__) for name in fi._PULL_HELPERS}
    pull_and_store = sci._pull_and_store_message
    yield sci, utils
    sci.time, sci._pull_and_store_message = time, pull_and_store
    for name, defaults in saved.items():
        getattr(utils, name).__kwdefaults__.update(defaults)


def test_tuned_waits_replace_the_fixed_sleeps_and_leave_other_sleeps_alone(restored_flower) -> None:
    sci, utils = restored_flower
    waits = fi.SuperNodeWaits(fleet_poll=0.01, reply_wait=0.001, pull_backoff=0.002, pull_backoff_cap=0.2)
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

    time.sleep(0.25)  # longer than the busy window since the node started
    assert poll_seconds() >= 0.25  # idle: the slow poll
    assert sci._pull_and_store_message(state=None) is None and not told
    assert sci._pull_and_store_message(state=None) == 42 and told == [True]  # a message: the executor hears
    assert poll_seconds() < 0.2  # and the node polls fast again


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
