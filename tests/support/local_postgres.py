"""A throwaway PostgreSQL server in a temporary directory, for tests and benchmarks.

It uses the machine's `initdb` and `pg_ctl` (Debian's postgresql package puts
them under /usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user (or `nobody`) through
`runuser`, with its data directory and unix socket in a fresh folder under
/tmp owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.budget.process import free_port


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing, or the server would not start; the message says which."""


def find_postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as"
    )


@dataclass(frozen=True)
class LocalPostgres:
    host: str
    port: int
    user: str
    base_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create `name` (dropping an old one) and return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _command(args: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if user else args


@contextmanager
def running_postgres(*, port: int | None = None, durable: bool = True) -> Iterator[LocalPostgres]:
    """initdb into a temporary folder, start the server on 127.0.0.1, yield it, then stop it and remove the folder.

    `durable=False` turns fsync off: for tests, whose many throwaway databases otherwise
    make the shutdown checkpoint crawl on a busy disk. Benchmarks keep the default.
    """
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise PostgresUnavailable(
            "initdb/pg_ctl not found on PATH nor under /usr/lib/postgresql/*/bin; "
            "install them with `apt-get install -y postgresql`"
        )
    user = _run_as()
    base = Path(tempfile.mkdtemp(prefix="fedcare-pg-", dir="/tmp"))
    data, log = base / "data", base / "server.log"
    if user:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    port = port or free_port()
    started = False
    try:
        _check(
            _command(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "fedcare",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                user,
            ),
            "initdb",
            log,
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _check(
            _command(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
                user,
            ),
            "pg_ctl start",
            log,
        )
        started = True
        yield LocalPostgres(host="127.0.0.1", port=port, user="fedcare", base_dir=base)
    finally:
        if started:
            _stop(bin_dir, data, user)
        shutil.rmtree(base, ignore_errors=True)


def _stop(bin_dir: Path, data: Path, user: str | None) -> None:
    """Fast shutdown, then immediate, then SIGKILL: a test session must never leave a server behind."""
    for mode in ("fast", "immediate"):
        try:
            subprocess.run(
                _command([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"], user),
                capture_output=True,
                timeout=45,
            )
        except subprocess.TimeoutExpired:
            continue
        if not (data / "postmaster.pid").exists():
            return
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def _check(command: list[str], what: str, log: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PostgresUnavailable(
            f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n{server_log}"
        )
