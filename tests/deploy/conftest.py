"""Fixtures for the deploy test: a private dockerd, the fedcare image, a federation folder, the compose stack.

Each fixture undoes what it did in a finalizer, also when the test fails or is interrupted:
the stack goes down with its volumes, and the daemon we started is stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.demo_data import write_demo_split

from .docker_env import (
    COMPOSE,
    REPO_ROOT,
    DeployEnvironmentError,
    DockerDaemon,
    PhaseTimer,
    build_context,
    cache_dir,
    cache_lock,
    dockerfile_base_image,
    ensure_base_image,
    ensure_packages,
    run,
    torch_wheel,
)
from .kits import give_to, init_federation, register_institutions

log = logging.getLogger("fedcare.tests.deploy")
IMAGE = "fedcare:deploy-test"
PROJECT = "fedcare-deploy-test"
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]
CONTAINER_UID = 10001


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: runs a private dockerd, builds the image and the compose stack (root)")


def _fail(exc: Exception) -> None:
    # Never a skip: a machine that cannot run the deploy test must show up red, with the reason.
    pytest.fail(f"deploy test cannot run on this machine: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def timer() -> PhaseTimer:
    return PhaseTimer(cache_dir() / "last-timings.json")


@pytest.fixture(scope="module")
def docker_daemon(timer: PhaseTimer) -> Iterator[DockerDaemon]:
    cache = cache_dir()
    with cache_lock(cache / "lock"):
        try:
            with timer.phase("apt"):
                ensure_packages()
        except DeployEnvironmentError as exc:
            _fail(exc)
        # Short path: a unix socket path must stay under 108 bytes.
        with tempfile.TemporaryDirectory(prefix="fcd-", dir="/tmp") as runtime:
            daemon = DockerDaemon(data_root=cache / "docker-data", runtime_dir=Path(runtime))
            try:
                with timer.phase("dockerd"):
                    daemon.start()
                yield daemon
            except DeployEnvironmentError as exc:
                _fail(exc)
            finally:
                with timer.phase("dockerd_stop"):
                    daemon.stop()


@pytest.fixture(scope="module")
def fedcare_image(docker_daemon: DockerDaemon, timer: PhaseTimer, tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = cache_dir()
    try:
        with timer.phase("base_image"):
            ensure_base_image(docker_daemon, tag=dockerfile_base_image(), cache=cache)
        with timer.phase("torch_wheel"):
            wheel = torch_wheel(cache)
    except DeployEnvironmentError as exc:
        _fail(exc)
    context = build_context(
        tmp_path_factory.mktemp("context"),
        wheel=wheel,
        ca_certificates=sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")),
    )
    with timer.phase("image_build"):
        done = docker_daemon.docker(
            "build", "--progress=plain", "-f", "deploy/Dockerfile", "-t", IMAGE, str(context), timeout=1500, check=False
        )
    if done.returncode != 0:
        pytest.fail(f"docker build failed:\n{done.stderr[-6000:]}", pytrace=False)
    # Keep the cache bounded: the previous build's untagged image, and build cache beyond the recent (pip's, deps).
    docker_daemon.docker("image", "prune", "--force", check=False)
    docker_daemon.docker("builder", "prune", "--force", "--keep-storage", "2GB", check=False)
    return IMAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ComposeStack:
    daemon: DockerDaemon
    federation: Path
    sites: Path  # the hospitals' site directories, one per hospital (their own keys; mounted by their services)
    env: dict[str, str]
    as_root: bool

    def hand_over(self) -> None:
        """Give the federation and site folders to the containers' uid (when we are root and they are not)."""
        if self.as_root:
            for root in (self.federation, self.sites):
                give_to(root, CONTAINER_UID, CONTAINER_UID)

    def register(self, *, epsilon_limit: float = 10.0, delta: float = 1e-5, he: bool = True) -> None:
        register_institutions(
            self.federation,
            self.sites,
            hospitals=HOSPITALS,
            epsilon_limit=epsilon_limit,
            delta=delta,
            he=he,
            env=self.env,
        )
        self.hand_over()

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.env['FEDCARE_CONTROL_PORT']}"

    @property
    def budget_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FEDCARE_BUDGET_PORT']}"

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, overrides: tuple[Path, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for path in (REPO_ROOT / "docker-compose.yml", *overrides) for arg in ("--file", str(path))]
        cmd = [
            COMPOSE,
            "--project-name",
            PROJECT,
            "--project-directory",
            str(REPO_ROOT),
            *files,
            "--env-file",
            str(self.federation / "compose.env"),
            *args,
        ]
        return run(cmd, env=self.env, timeout=timeout, check=check, cwd=REPO_ROOT)

    def health(self) -> dict[str, str]:
        """service -> docker's status line ("Up 5 seconds (healthy)"); one `docker ps`, cheap enough to poll."""
        out = self.daemon.docker(
            "ps",
            "--all",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--format",
            '{{.Label "com.docker.compose.service"}}\t{{.Status}}',
            check=False,
        ).stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def wait_healthy(self, services: list[str], *, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.health()
            if all("(healthy)" in states.get(s, "") for s in services):
                return
            time.sleep(1.0)
        raise AssertionError(f"services not healthy within {timeout:.0f} s: {states}\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False, timeout=60).stdout[-20000:]


@pytest.fixture
def compose_stack(
    fedcare_image: str, docker_daemon: DockerDaemon, timer: PhaseTimer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ComposeStack]:
    federation, sites = tmp_path / "federation", tmp_path / "hospitals"
    control_port, budget_port, fleet_port = free_port(), free_port(), free_port()
    split = write_demo_split(tmp_path / "demo-data", dataset="breast-cancer", hospitals=len(HOSPITALS))
    init_federation(
        federation,
        split=split,
        hospitals=HOSPITALS,
        control_address=f"127.0.0.1:{control_port}",
        budget_url=f"http://127.0.0.1:{budget_port}",
    )
    sites.mkdir()
    as_root = os.geteuid() == 0
    uid, gid = (CONTAINER_UID, CONTAINER_UID) if as_root else (os.getuid(), os.getgid())
    env = {
        **docker_daemon.env,
        "FEDCARE_IMAGE": fedcare_image,
        "FEDCARE_FEDERATION": str(federation),
        "FEDCARE_UID": str(uid),
        "FEDCARE_GID": str(gid),
        "FEDCARE_CONTROL_PORT": str(control_port),
        "FEDCARE_BUDGET_PORT": str(budget_port),
        "FEDCARE_FLEET_PORT": str(fleet_port),
        "FEDCARE_FLEET_BIND": "127.0.0.1",
        **{f"HOSPITAL_{i}_DATA": str(federation / "data" / name) for i, name in enumerate(HOSPITALS, start=1)},
        **{f"HOSPITAL_{i}_SITE": str(sites / name) for i, name in enumerate(HOSPITALS, start=1)},
    }
    (federation / "compose.env").write_text("")  # ignore any .env in the checkout
    stack = ComposeStack(docker_daemon, federation, sites, env, as_root=as_root)
    stack.hand_over()
    stack.compose(
        "down", "--volumes", "--remove-orphans", "--timeout", "5", check=False
    )  # an earlier session's leftovers
    try:
        yield stack
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:  # shown under "Captured log teardown" of the failure
            log.error("compose logs (last 200 lines per service):\n%s", stack.logs(tail=200))
        with timer.phase("teardown"):
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
