"""`fedcare node start` runs the SuperNode and the warm executor as one: SIGTERM stops both (and itself),
and the process a supervisor started stays the one that runs the node (the CLI execs into it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedcare.processes import free_port
from fedcare.warm_executor import READY_LINE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_sigterm_stops_the_supernode_and_the_warm_executor(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    args = [
        *(sys.executable, "-m", "fedcare.cli", "node", "start", "--insecure"),
        *("--superlink", "127.0.0.1:9", "--runtime-port", str(free_port())),  # no SuperLink: it keeps retrying
        *("--node-config", 'institution="hospital-1"', "--data", str(tmp_path / "data.csv")),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_HOME": str(tmp_path / "flwr")}
    with log.open("wb") as out:
        node = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while READY_LINE not in log.read_text(errors="replace"):
            assert node.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the executor did not warm up:\n{log.read_text()}"
            time.sleep(0.5)
        root = psutil.Process(node.pid)
        tree = [root, *root.children(recursive=True)]
        commands = [" ".join(p.cmdline()) for p in tree]
        assert "fedcare.node" in commands[0], commands  # the CLI exec'd into the light supervisor, same pid
        assert any("fedcare.fast_supernode" in c and "--isolation process" in c for c in commands), commands
        assert any("fedcare.warm_executor" in c for c in commands), commands
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"still running after SIGTERM: {[p.pid for p in alive]}"
        assert "stopped after 0 messages (0 failed)" in log.read_text(errors="replace")  # logged before it exits
    finally:
        try:  # the node's own session: it, its SuperNode, its executor and any ClientApp child
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
