"""Fixtures for the deploy test: a private dockerd, the fedcare image, a federation folder, the compose stack.

Each fixture undoes what it did in a finalizer, also when the test fails or is interrupted:
the stack goes down with its volumes, and the daemon we started is stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from common.demo_data import write_demo_split

from .docker_env import (
    DeployEnvironmentError,
    DockerDaemon,
    PhaseTimer,
    build_context,
    cache_dir,
    cache_lock,
    dockerfile_base_image,
    ensure_base_image,
    ensure_packages,
    torch_wheel,
)
from .kits import give_to, init_federation, register_institutions
from .projects import COORDINATOR_FILE, HOSPITAL_FILE, ComposeProject

log = logging.getLogger("fedcare.tests.deploy")
IMAGE = "fedcare:deploy-test"
PROJECT = "fedcare-deploy-test"
COORDINATOR = "coordinator.fedcare.test"  # hospitals' name for the coordinator's host
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
class SplitStack:
    """The coordinator and each hospital as separate compose projects, each on its own network: hospitals dial the
    coordinator's published ports on the host, by the name COORDINATOR (mapped to the host gateway)."""

    federation: Path
    sites: Path  # the hospitals' site directories, one per hospital (their own keys; mounted read-only)
    coordinator: ComposeProject
    hospitals: dict[str, ComposeProject]
    env: dict[str, str]  # for the fedcare CLI on the host (it plays each hospital's and the coordinator's operator)
    as_root: bool

    def projects(self) -> list[ComposeProject]:
        return [self.coordinator, *self.hospitals.values()]

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
            he=he,
            env=self.env,
            register_at_coordinator=lambda requests: self._register_at_coordinator(
                requests, epsilon_limit=epsilon_limit, delta=delta
            ),
        )
        self.hand_over()

    def _register_at_coordinator(self, requests: list[Path], *, epsilon_limit: float, delta: float) -> None:
        """`fedcare institution register --request` for each request, in one run of the coordinator's `admin`
        container: the control API is reachable on the coordinator's network only."""
        self.hand_over()
        inside = "/run/fedcare/federation"
        options = f"--epsilon-limit {epsilon_limit} --delta {delta} --federation {inside}"
        options += " --superlink superlink:8000 --budget-url https://budget:8470"
        script = " && ".join(
            f"fedcare institution register --request {inside}/requests/{request.name} {options}" for request in requests
        )
        self.coordinator.compose(
            "run", "--rm", "--no-deps", "--entrypoint", "/opt/fedcare/deploy/entrypoint.sh", "admin", "sh", "-c", script
        )

    @property
    def budget_url(self) -> str:
        """The budget service as the host reaches it (its certificate names 127.0.0.1)."""
        return f"https://127.0.0.1:{self.coordinator.env['FEDCARE_BUDGET_PORT']}"

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.logs(tail=200)}" for p in self.projects())


@pytest.fixture
def split_stack(
    fedcare_image: str, docker_daemon: DockerDaemon, timer: PhaseTimer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SplitStack]:
    federation, sites = tmp_path / "federation", tmp_path / "hospitals"
    budget_port, fleet_port = free_port(), free_port()
    split = write_demo_split(tmp_path / "demo-data", dataset="breast-cancer", hospitals=len(HOSPITALS))
    init_federation(
        federation,
        split=split,
        hospitals=HOSPITALS,
        coordinator=COORDINATOR,
        fleet_port=fleet_port,
        budget_port=budget_port,
    )
    sites.mkdir()
    as_root = os.geteuid() == 0
    uid, gid = (CONTAINER_UID, CONTAINER_UID) if as_root else (os.getuid(), os.getgid())
    common = {**docker_daemon.env, "FEDCARE_IMAGE": fedcare_image, "FEDCARE_UID": str(uid), "FEDCARE_GID": str(gid)}
    env_file = tmp_path / "empty.env"  # ignore any .env in the checkout
    env_file.write_text("")
    coordinator = ComposeProject(
        docker_daemon,
        f"{PROJECT}-coordinator",
        (COORDINATOR_FILE,),
        {
            **common,
            "FEDCARE_FEDERATION": str(federation),
            "FEDCARE_BUDGET_PORT": str(budget_port),
            "FEDCARE_FLEET_PORT": str(fleet_port),
        },
        env_file,
    )
    # The test's stand-in for DNS: COORDINATOR is the host, whose published ports lead to the coordinator project.
    gateway = tmp_path / "coordinator-host.yml"
    gateway.write_text(yaml.safe_dump({"services": {"node": {"extra_hosts": [f"{COORDINATOR}:host-gateway"]}}}))
    hospitals = {
        name: ComposeProject(
            docker_daemon,
            f"{PROJECT}-{name}",
            (HOSPITAL_FILE,),
            {
                **common,
                "FEDCARE_SITE": str(sites / name),
                "FEDCARE_DATA": str(federation / "data" / name),
                "FEDCARE_COORDINATOR": COORDINATOR,
                "FEDCARE_FLEET_PORT": str(fleet_port),
            },
            env_file,
            overrides=(gateway,),
        )
        for name in HOSPITALS
    }
    stack = SplitStack(federation, sites, coordinator, hospitals, docker_daemon.env, as_root=as_root)
    stack.hand_over()
    try:
        yield stack
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:  # shown under "Captured log teardown" of the failure
            log.error("compose logs (last 200 lines per service):\n%s", stack.logs())
        with timer.phase("teardown"):
            for project in reversed(stack.projects()):  # hospitals first, then the coordinator: containers,
                project.down()  # networks and volumes, also when the test failed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
