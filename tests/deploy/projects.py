"""Compose projects as the deploy test drives them: one per host (the coordinator, each hospital), each on its
own network, all against the private dockerd, and each taken down with its volumes by whoever brought it up."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .docker_env import COMPOSE, REPO_ROOT, DockerDaemon, run

COORDINATOR_FILE = REPO_ROOT / "deploy" / "coordinator" / "docker-compose.yml"
HOSPITAL_FILE = REPO_ROOT / "deploy" / "hospital" / "docker-compose.yml"
ONE_HOST_FILE = REPO_ROOT / "docker-compose.yml"


@dataclass(eq=False)  # hashable by identity
class ComposeProject:
    """`docker-compose --project-name NAME --file ...` with this project's environment (no .env file is read)."""

    daemon: DockerDaemon
    name: str
    files: tuple[Path, ...]
    env: dict[str, str]
    env_file: Path  # an empty file: ignore any .env next to the compose file
    overrides: tuple[Path, ...] = field(default=())

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for path in (*self.files, *self.overrides) for arg in ("--file", str(path))]
        cmd = [COMPOSE, "--project-name", self.name, *files, "--env-file", str(self.env_file), *args]
        return run(cmd, env=self.env, timeout=timeout, check=check, cwd=self.files[0].parent)

    def health(self) -> dict[str, str]:
        """service -> docker's status line ("Up 5 seconds (healthy)"); one `docker ps`, cheap enough to poll."""
        out = self.daemon.docker(
            "ps",
            "--all",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--format",
            '{{.Label "com.docker.compose.service"}}\t{{.Status}}',
            check=False,
        ).stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False, timeout=60).stdout[-20000:]

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=300)


def wait_healthy(wanted: dict[ComposeProject, list[str]], *, timeout: float = 240) -> None:
    """Every listed service of every project healthy, or an AssertionError with their states and logs."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        states = {project.name: project.health() for project in wanted}
        if all("(healthy)" in states[p.name].get(s, "") for p, services in wanted.items() for s in services):
            return
        time.sleep(1.0)
    logs = "\n".join(project.logs() for project in wanted)
    raise AssertionError(f"services not healthy within {timeout:.0f} s: {states}\n{logs}")
