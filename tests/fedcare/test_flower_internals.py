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
    yield sci, utils
    sci.time = time
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
