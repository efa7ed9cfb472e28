"""The ServerApp's final log flush (fedcare/flower_internals/log_flush.py), on Flower's own uploader thread.

Flower's flush ends every ServerApp run with a fixed `sleep(min(1, remaining))`; fedcare's stops the uploader
and waits for its last push instead. Only the SuperLink's PushLogs is replaced, by a recorder.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from queue import Queue
from typing import Any

import pytest

from fedcare.flower_internals.log_flush import tune_serverapp_log_flush

real_sleep = time.sleep


class RecordingLink:
    """Stands in for the SuperLink's runtime API: PushLogs takes a while and records the lines it got."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.pushes_done = threading.Event()

    def PushLogs(self, request: Any) -> None:  # noqa: N802 (Flower's RPC name)
        real_sleep(0.05)
        self.lines += list(request.logs)
        self.pushes_done.set()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Flower's ServerApp runner module with the flush tuned (undone after), and every sleep recorded."""
    module = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    monkeypatch.setattr(module, "start_log_uploader", module.start_log_uploader)
    monkeypatch.setattr(module, "flush_logs", module.flush_logs)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    module.recorded_sleeps = sleeps
    yield module
    del module.recorded_sleeps


def test_the_flush_returns_once_the_last_lines_are_pushed_without_a_fixed_second(runner: Any) -> None:
    tune_serverapp_log_flush()
    link, queue = RecordingLink(), Queue()
    uploader = runner.start_log_uploader(log_queue=queue, node_id=0, run_id=1, client=link)
    queue.put("round 1: aggregated 3 update(s)")
    queue.put("run finished")

    assert runner.flush_logs(queue)

    assert link.lines == ["round 1: aggregated 3 update(s)", "run finished"]
    assert not uploader.is_alive()
    assert not [s for s in runner.recorded_sleeps if s >= 0.5], runner.recorded_sleeps  # Flower's sleeps 1 s here
    runner.stop_log_uploader(queue, uploader)  # Flower's own stop afterwards joins a finished thread


def test_tuning_twice_keeps_one_wrapper(runner: Any) -> None:
    tune_serverapp_log_flush()
    tuned = runner.start_log_uploader
    tune_serverapp_log_flush()
    assert runner.start_log_uploader is tuned
