"""Secret files (private keys, tokens, the HE secret context): 0600 from the first byte.

Every secret fedcare writes goes through `write_private`, so there is one place
that decides how a secret lands on disk: never world- or group-readable, not
even for the moment between create and chmod, and replaced atomically so a
crash leaves the old secret or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def write_private(path: Path, data: bytes | str, *, exclusive: bool = False) -> Path:
    """Write `data` to `path` with mode 0600 (atomically: temp file, fsync, rename).

    `exclusive=True` refuses to replace an existing file (FileExistsError), for
    secrets that must be made once and reused, such as a federation's admin token.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to replace a secret")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, PRIVATE_MODE)  # say so explicitly: the umask cannot widen it either way
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if someone created `path` meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_private_dir(path: Path) -> Path:
    """A directory only its owner may enter (0700), created if missing."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def is_private(path: Path) -> bool:
    """True when no one but the owner may read `path`."""
    return Path(path).stat().st_mode & 0o077 == 0
