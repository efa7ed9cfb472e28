"""A private Docker engine for the deploy tests: packages, daemon, base image, build context, compose.

No image registry is reachable from the build machines, so everything comes from Debian's packages and
PyPI: `docker.io`, `docker-compose` and `debootstrap` from apt, a base image made with debootstrap and
`docker import`, torch from the wheel the host's pip has. The daemon is our own (own socket, exec root,
pid file), never the machine's, and is stopped by whoever started it.

Reruns are fast because three things are cached in a stable folder (FEDCARE_DEPLOY_CACHE, default
~/.cache/fedcare-deploy): the debootstrap root as a tar, the torch wheel, and the daemon's data root
(image layers and BuildKit's pip cache). A lock file serializes test sessions that share the cache.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fedcare.tests.deploy")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"  # Debian's client: BuildKit works with it, not with other clients on the PATH
DOCKERD = "/usr/sbin/dockerd"
COMPOSE = "/usr/bin/docker-compose"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
APT_PACKAGES = ("docker.io", "docker-compose", "debootstrap")
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
TORCH_VERSION = "2.13.0"


class CommandFailed(subprocess.CalledProcessError):
    """A CalledProcessError whose message carries the command's output."""

    def __str__(self) -> str:
        return _describe(self)


class DeployEnvironmentError(RuntimeError):
    """The machine cannot run the deploy test (no Docker, no root, no network); the message says what is missing."""


def cache_dir() -> Path:
    path = Path(os.environ.get("FEDCARE_DEPLOY_CACHE", Path.home() / ".cache" / "fedcare-deploy"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class PhaseTimer:
    """Seconds spent per phase, written to CACHE/last-timings.json as the test goes."""

    path: Path
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - start, 1)
            self.path.write_text(json.dumps(self.phases, indent=2))
            log.warning("deploy phase %s: %.1f s", name, self.phases[name])


def run(
    cmd: list[str],
    *,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output, so a failed test says why."""
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, cmd, done.stdout, done.stderr)
    return done


def _describe(exc: subprocess.CalledProcessError) -> str:
    out, err = (exc.stdout or "")[-3000:], (exc.stderr or "")[-3000:]
    return f"`{' '.join(map(str, exc.cmd))}` exited {exc.returncode}:\n{out}\n{err}"


# ---- packages ---------------------------------------------------------------------------------------------
def ensure_packages() -> None:
    """Install Debian's docker.io, docker-compose and debootstrap when any of them is missing."""
    missing = [
        p for p, binary in zip(APT_PACKAGES, (DOCKERD, COMPOSE, DEBOOTSTRAP), strict=False) if not Path(binary).exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise DeployEnvironmentError(
            f"the deploy test needs {', '.join(missing)} installed, and root to install them or run dockerd"
        )
    if shutil.which("apt-get") is None:
        raise DeployEnvironmentError(
            f"no apt-get to install {', '.join(missing)}; install Docker 20.10+, docker-compose and debootstrap"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    try:
        if run(install, env=env, check=False, timeout=900).returncode != 0:
            run(["apt-get", "update"], env=env, timeout=600)  # a clean machine may have no package lists yet
            run(install, env=env, timeout=900)
    except subprocess.CalledProcessError as exc:
        raise DeployEnvironmentError(f"could not install {', '.join(missing)}: {_describe(exc)}") from exc


# ---- the daemon -------------------------------------------------------------------------------------------
@dataclass
class DockerDaemon:
    """dockerd with its own socket, exec root and pid file; data root in the cache so layers survive."""

    data_root: Path
    runtime_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        # Next to the data root (not in the temp dir): a daemon left behind by a killed session is found and stopped.
        return self.data_root.parent / "dockerd.pid"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1")
        return env

    def docker(
        self, *args: str, timeout: float = 600, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], env=self.env, timeout=timeout, check=check, input=input)

    def _stop_leftover(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return
        if "dockerd" in cmdline and str(self.data_root) in cmdline:
            log.warning("stopping dockerd %d left behind by an earlier session on %s", pid, self.data_root)
            _terminate(pid, grace=30)
            args = cmdline.split("\0")
            if (
                "--exec-root" in args[:-1]
            ):  # its runtime folder (socket, exec root): ours, unless something is still mounted
                runtime = Path(args[args.index("--exec-root") + 1]).parent
                mounts = Path("/proc/mounts").read_text()
                if runtime.name.startswith("fcd-") and runtime.parent == Path("/tmp") and f" {runtime}/" not in mounts:
                    shutil.rmtree(runtime, ignore_errors=True)

    def start(self, *, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise DeployEnvironmentError(
                "dockerd needs root (or a rootless Docker set up by hand); run the deploy test as root"
            )
        self._stop_leftover()
        self.data_root.mkdir(parents=True, exist_ok=True)
        log_path = self.runtime_dir / "dockerd.log"
        args = [
            DOCKERD,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.runtime_dir / "exec"),
            "--pidfile",
            str(self.pidfile),
            "-H",
            f"unix://{self.socket}",
            "--storage-driver=overlay2",
            "--log-level=warn",
        ]
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DeployEnvironmentError(f"dockerd exited with {self.process.returncode}:\n{_tail(log_path)}")
            if self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                self._remove_leftovers()
                return
            time.sleep(0.2)
        raise DeployEnvironmentError(
            f"dockerd did not answer on {self.socket} within {timeout:.0f} s:\n{_tail(log_path)}"
        )

    def _remove_leftovers(self) -> None:
        """Containers of a session that was killed outright come back with the daemon (restart policies): remove them,
        their volumes and networks. Everything this daemon holds is ours."""
        containers = self.docker("ps", "--all", "--quiet", check=False).stdout.split()
        if containers:
            log.warning("removing %d container(s) left by an earlier session", len(containers))
            self.docker("rm", "--force", "--volumes", *containers, check=False, timeout=120)
        self.docker("volume", "prune", "--force", check=False)
        self.docker("network", "prune", "--force", check=False)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            _terminate(self.process.pid, grace=30)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("dockerd %d did not exit", self.process.pid)
        self.process = None
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self) -> str:
        return _tail(self.runtime_dir / "dockerd.log")


def _terminate(pid: int, *, grace: float) -> None:
    """SIGTERM (dockerd then stops its containers and containerd), SIGKILL after `grace` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def cache_lock(path: Path, *, timeout: float = 1800) -> Iterator[None]:
    """One deploy session at a time per cache (they share a data root)."""
    with path.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeployEnvironmentError(f"another deploy test holds {path} for over {timeout:.0f} s") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- images -----------------------------------------------------------------------------------------------
def dockerfile_base_image(dockerfile: Path = REPO_ROOT / "deploy" / "Dockerfile") -> str:
    """The default of `ARG BASE_IMAGE=...` in the Dockerfile: the tag the debootstrap image must carry."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG BASE_IMAGE="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{dockerfile} has no `ARG BASE_IMAGE=` line")


def ensure_base_image(daemon: DockerDaemon, *, tag: str, cache: Path) -> str:
    """Tag `tag` from a cached debootstrap tarball, making the tarball first when it is missing.

    Returns what was done."""
    if daemon.docker("image", "inspect", tag, check=False).returncode == 0:
        return "present"
    tarball = cache / "base-bookworm.tar"
    made = "imported"
    if not tarball.exists():
        build_base_tarball(tarball)
        made = "debootstrapped"
    with tarball.open("rb") as handle:
        done = subprocess.run(
            [DOCKER, "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
            stdin=handle,
            capture_output=True,
            text=True,
            env=daemon.env,
            timeout=600,
        )
    if done.returncode != 0:
        raise DeployEnvironmentError(f"docker import of {tarball} failed: {done.stderr}")
    return made


def build_base_tarball(tarball: Path, *, mirror: str = "http://deb.debian.org/debian") -> None:
    """debootstrap a minimal bookworm with Python (about a minute), strip caches and docs, tar it."""
    with tempfile.TemporaryDirectory(prefix="fedcare-debootstrap-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        try:
            run(
                [DEBOOTSTRAP, "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(root), mirror],
                timeout=1200,
            )
        except subprocess.CalledProcessError as exc:
            raise DeployEnvironmentError(f"debootstrap failed: {_describe(exc)}") from exc
        for pattern in (
            "var/cache/apt/archives/*.deb",
            "var/lib/apt/lists/*",
            "usr/share/doc/*",
            "usr/share/man/*",
            "usr/share/locale/*",
        ):
            for path in root.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], timeout=600)
        partial.replace(tarball)


def torch_wheel(cache: Path) -> Path:
    """The torch wheel the host's pip resolves (its find-links and constraints apply), kept in the cache."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"torch-{TORCH_VERSION}[+-]*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        try:  # this interpreter's pip: the machine's pip configuration (find-links, constraints) applies
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    f"torch=={TORCH_VERSION}",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-d",
                    str(wheels),
                ],
                timeout=1800,
            )
        except subprocess.CalledProcessError as exc:
            raise DeployEnvironmentError(f"pip download torch=={TORCH_VERSION} failed: {_describe(exc)}") from exc
        found = sorted(wheels.glob(f"torch-{TORCH_VERSION}[+-]*.whl"))
    if not found:
        raise DeployEnvironmentError(f"pip download left no torch wheel in {wheels}")
    if "+cpu" not in found[0].name:
        log.warning("%s is not a CPU build: the image will carry CUDA libraries", found[0].name)
    return found[0]


def build_context(dest: Path, *, wheel: Path, ca_certificates: list[Path]) -> Path:
    """The repository's files (tracked and new, not ignored), plus the torch wheel and the host's extra CAs."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (dest / "deploy" / "wheels").mkdir(parents=True, exist_ok=True)
    os.link(
        wheel, dest / "deploy" / "wheels" / wheel.name
    ) if wheel.stat().st_dev == dest.stat().st_dev else shutil.copy2(wheel, dest / "deploy" / "wheels" / wheel.name)
    (dest / "deploy" / "ca-certificates").mkdir(parents=True, exist_ok=True)
    for cert in ca_certificates:
        shutil.copy2(cert, dest / "deploy" / "ca-certificates" / cert.name)
    return dest


def new_secret() -> str:
    return secrets.token_urlsafe(32)
