"""Helpers for tests that start real SuperLink and SuperNode processes."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from common.demo_data import DemoSplit, write_demo_split
from fedcare.federation import LocalFederation

APP_DIR = Path(__file__).resolve().parents[2]


def wait_finished(fed: LocalFederation, run_id: int, *, timeout: float = 600.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fed.run_status(run_id)
        if status.startswith("finished"):
            return status
        time.sleep(2.0)
    raise AssertionError(f"run {run_id} still {status!r} after {timeout:.0f} s")


def assert_all_exited(pids: set[int]) -> None:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"processes still running after the federation stopped: {alive}"


@pytest.fixture(scope="module")
def breast_cancer_split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("data"), dataset="breast-cancer", hospitals=3)
