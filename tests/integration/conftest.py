"""Helpers for tests that start real SuperLink and SuperNode processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.chaos_bed import ChaosBed
from common.demo_data import DemoSplit, write_demo_split
from fedcare.federation import LocalFederation

APP_DIR = Path(__file__).resolve().parents[2]


def wait_finished(fed: LocalFederation, run_id: int, *, timeout: float = 600.0) -> str:
    try:
        return fed.wait_finished(run_id, timeout=timeout)
    except TimeoutError as exc:  # a test failure, not an error in the test
        raise AssertionError(str(exc)) from None


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


SHARED_BED = "chaos_bed"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared chaos bed run last, one after the other: the bed then lives only through them (its
    processes idle meanwhile, and it points TMPDIR into itself), and ends with the session."""
    items.sort(key=lambda item: SHARED_BED in getattr(item, "fixturenames", ()))  # stable: the order stays


@pytest.fixture(scope="session")
def chaos_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosBed]:
    """One federation of 3 hospitals (TLS, node keys, DP, the budget service; bench/chaos_bed.py) for the tests
    whose faults it is built to survive: test_chaos's four and test_resume's two coordinator crashes. Starting a
    federation costs about 40 s; each test leaves the bed whole for the next, or fails. Nothing it started may
    outlive it: that is checked once it stopped."""
    from bench.chaos_checks import leftover_violations  # here: bench.chaos_faults imports this module

    workdir = tmp_path_factory.mktemp("chaos")
    bed = ChaosBed(workdir / "bed", write_demo_split(workdir / "data", dataset="breast-cancer", hospitals=3))
    with bed:
        yield bed
    left = leftover_violations(bed, [])
    assert not left, f"the chaos bed left processes or temp files behind: {left}"
