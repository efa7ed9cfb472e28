"""The SuperExec auth secret a coordinator's SuperLink and its ServerApp executor share: made once, then kept.

The SuperLink refuses task claims not signed with it (`--superexec-auth-secret-file`), and the warm executor
reads it once, at its start. So the secret must outlive a SuperLink restart: a SuperLink restarted on its
database after a crash, with a new secret, turned the surviving executor's claims away (401); Flower's HTTP
retry answers a 401 by sending SIGINT to its own process, so the executor exited and the resumed run never
got a ServerApp (issue 16: `tests/integration/test_resume.py` stalled after the SuperLink's restart).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from common.private_files import write_private


def keep_superexec_secret(path: Path) -> bool:
    """Make the secret at `path` (0600) unless it is there already; whether it was made now."""
    if path.exists() and path.stat().st_size:
        return False
    write_private(path, secrets.token_urlsafe(32))
    return True
