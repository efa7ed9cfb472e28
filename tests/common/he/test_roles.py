"""The package is split by who runs each module: the ServerApp must not load the hospitals' code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_server_imports_no_hospital_code() -> None:
    """A fresh interpreter, since this test session has imported `common.he.hospital` already."""
    probe = (
        "import sys, server.app, server.he_rounds, server.he_aggregate; "
        "print(sorted(m for m in sys.modules if m.startswith(('common.he', 'client'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = out.stdout.strip()
    assert "common.he.wire" in loaded and "common.he.keys" in loaded
    assert "common.he.hospital" not in loaded and "'client" not in loaded
