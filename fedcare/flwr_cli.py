"""The coordinator's `flwr` CLI against one SuperLink: submit a run, read its status, stop it.

The connection lives in its own FLWR_HOME (`homes/cli/config.toml` under the federation's workdir), so
it never touches the user's own Flower configuration.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedcare.app_stage import stage_app
from fedcare.processes import FederationError, console_script, flower_env
from fedcare.superlink_control import CONNECTION, write_connection_config

log = logging.getLogger("fedcare.federation")


@dataclass(frozen=True)
class FlwrCli:
    workdir: Path
    prefix: tuple[str, ...] = ()  # runs the CLI where the coordinator runs (fedcare.placement)

    @property
    def home(self) -> Path:
        return self.workdir / "homes" / "cli"

    def write_config(self, address: str, *, ca_certificate: Path | None) -> None:
        """Point the connection at `address` (TLS with `ca_certificate`; None: insecure)."""
        write_connection_config(self.home, address=address, root_certificates=ca_certificate)

    def run(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run a `flwr` CLI command against this federation and parse its JSON answer."""
        cmd = [*self.prefix, console_script("flwr"), *args, "--format", "json"]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=flower_env(self.home), cwd=self.workdir
        )
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError as exc:
            raise FederationError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): {done.stdout}{done.stderr}"
            ) from exc
        if not answer.get("success", False):
            raise FederationError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def submit(self, *, app_dir: Path, run_config: dict[str, Any]) -> int:
        config_path = self.workdir / f"run-config-{time.time_ns()}.toml"
        config_path.write_text(tomli_w.dumps(run_config))
        staged = stage_app(app_dir, into=self.workdir / "app-stage")
        answer = self.run("run", str(staged), CONNECTION, "--run-config", str(config_path))
        return int(answer["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        """Flower's row for the run (`flwr ls`): status, elapsed seconds, timestamps, traffic."""
        runs = self.run("ls", CONNECTION, "--run-id", str(run_id))["runs"]
        return dict(runs[0]) if runs else {"status": "unknown"}

    def stop_run(self, run_id: int) -> None:
        try:
            self.run("stop", str(run_id), CONNECTION, timeout=30)
        except (FederationError, subprocess.TimeoutExpired) as exc:
            log.warning("could not stop run %d cleanly: %s", run_id, exc)
