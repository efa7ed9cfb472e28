"""Helpers for tests that start real SuperLink and SuperNode processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.chaos_bed import ChaosBed
from common.demo_data import DemoSplit, write_demo_split
from common.he.keys import KeyFiles, write_keys
from fedcare.federation import LocalFederation, ManagedProcess

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


SHARED = ("warm_hospital", "he_federation", "chaos_bed")  # session federations, in the order their tests run last
STOPPED_AFTER_USE = ("warm_hospital", "he_federation")
LAST_ON_SHARED = "breaks_shared_federation"  # marks the test that leaves a shared federation unfit for others


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{LAST_ON_SHARED}: runs last of the tests on its shared federation")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a shared federation run after the others, grouped by federation, one after the other, the
    one that breaks it last: each federation then lives only through its tests (the chaos bed, last, ends with
    the session; its processes idle meanwhile, and it points TMPDIR into itself)."""

    def order(item: pytest.Item) -> tuple[int, bool]:
        names = getattr(item, "fixturenames", ())
        group = next((i for i, name in enumerate(SHARED, start=1) if name in names), 0)
        return group, item.get_closest_marker(LAST_ON_SHARED) is not None

    items.sort(key=order)  # stable: the order within a group stays


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the test's fixtures, which must run whatever this does
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A shared federation (not the chaos bed: it ends with the session) stops once its last test ended, rather
    than idle through the other groups; its check that every process is gone then fails that test's teardown."""
    following = getattr(nextitem, "fixturenames", ()) if nextitem is not None else ()
    for name in STOPPED_AFTER_USE:
        shared = (getattr(item, "funcargs", None) or {}).get(name)
        if shared is not None and name not in following:
            shared.close()


@dataclass
class SharedFederation:
    """A federation that several tests use, one after the other (`SHARED`). A test that ends it
    (`breaks_shared_federation`) calls `close` itself, where its own federation used to stop; otherwise the
    session's end does. Either way every process it started must be gone."""

    fed: LocalFederation
    root: Path
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        stack, self._stack = self._stack, ExitStack()  # closing twice stops nothing twice
        stack.close()
        assert_all_exited(self.fed.seen_pids)


@contextmanager
def shared_federation(root: Path, **options: Any) -> Iterator[SharedFederation]:
    """A LocalFederation in root / "fed" with its SuperLink started, closed (and checked) however its tests end."""
    with ExitStack() as stack:
        fed = stack.enter_context(LocalFederation(root / "fed", **options))
        shared = SharedFederation(fed, root, stack.pop_all())
    try:
        fed.start_superlink()
        yield shared
    finally:
        shared.close()


@dataclass
class HeFederation:
    """3 hospitals, each with the CKKS secret context and a state folder of its own; no budget service."""

    shared: SharedFederation
    keys: KeyFiles
    split: DemoSplit
    nodes: dict[int, ManagedProcess] = field(default_factory=dict)  # hospital-i's node, the latest started

    @property
    def fed(self) -> LocalFederation:
        return self.shared.fed

    def start(self, i: int, *, wait: bool = True) -> ManagedProcess:
        """hospital-i's node, from its kit (hence its node id) and state folder: the same after a restart."""
        state = self.shared.root / f"state-{i}"
        config = {"he-secret-context": str(self.keys.hospital_context), "state-dir": str(state)}
        self.nodes[i] = self.fed.add_hospital(
            institution=f"hospital-{i}", data_path=self.split.hospital_paths[i - 1], node_config=config, wait=wait
        )
        return self.nodes[i]

    def close(self) -> None:
        self.shared.close()


@pytest.fixture(scope="session")
def he_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeFederation]:
    """One federation for test_he_federation and then test_dropouts, which kills hospitals: starting one costs
    about 20 s on 2 idle cores."""
    root = tmp_path_factory.mktemp("he-federation")
    split = write_demo_split(root / "data", dataset="breast-cancer", hospitals=3)
    keys = write_keys(root / "he")
    with shared_federation(root) as shared:
        he = HeFederation(shared, keys, split)
        for i in (1, 2, 3):  # started together: their executors warm up side by side
            he.start(i, wait=False)
        he.nodes = dict(zip(he.nodes, he.fed.wait_for_nodes(list(he.nodes.values())), strict=True))
        yield he


WARM_MESSAGE_TIMEOUT = 8.0  # warm_hospital's --message-timeout: a ClientApp that hangs or trains past it is killed


@dataclass
class WarmHospital:
    """hospital-1 alone (`fedcare node start --message-timeout WARM_MESSAGE_TIMEOUT`), with a state folder."""

    shared: SharedFederation
    node: ManagedProcess
    state: Path
    split: DemoSplit  # hospital-1 holds hospital_paths[0]

    @property
    def fed(self) -> LocalFederation:
        return self.shared.fed

    def log_size(self) -> int:
        """The node's log's size now: a test's part of the log starts there (`log_since`)."""
        return self.node.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.node.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def close(self) -> None:
        self.shared.close()


@pytest.fixture(scope="session")
def warm_hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmHospital]:
    """One federation for test_warm_dp's child killed mid-training and test_warm_executor's misbehaving
    ClientApps: in each a ClientApp is killed at the message timeout, and the executor serves on."""
    root = tmp_path_factory.mktemp("warm-hospital")
    split = write_demo_split(root / "data", dataset="breast-cancer", hospitals=3)
    with shared_federation(root, node_options=["--message-timeout", f"{WARM_MESSAGE_TIMEOUT:g}"]) as shared:
        state = root / "state"
        config = {"state-dir": str(state), "epsilon-limit": 1000.0}  # test_warm_dp's 400 epochs spend over 10
        node = shared.fed.add_hospital(institution="hospital-1", data_path=split.hospital_paths[0], node_config=config)
        yield WarmHospital(shared, node, state, split)


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
