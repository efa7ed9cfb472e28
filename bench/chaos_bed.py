"""The chaos soak's test bed: a budget service that can be killed and restarted, and a real federation of 3
hospitals (TLS, node keys, DP on) whose parts the faults in `bench/chaos_faults.py` kill.

Everything the bed starts writes its temp files under `workdir/tmp` (TMPDIR), so a leftover is seen.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psutil

from common.demo_data import DemoSplit
from common.he.keys import KeyFiles, write_keys
from fedcare.federation import LocalFederation, ManagedProcess
from server.budget.process import free_port, running_budget_service
from server.budget_client.admin import BudgetAdmin
from server.budget_client.events import BudgetEventClient

HOSPITALS = ("hospital-1", "hospital-2", "hospital-3")
ADMIN_TOKEN = "chaos-admin-" + "c" * 32
# One shared bed serves many runs, each spending up to the default target epsilon of 3: a budget of 10 ran out
# after 14 trials of a 30-trial soak, and every later run was (rightly) refused. The soak tests faults, not budgets.
EPSILON_LIMIT = 1000.0
KEPT_ON_PURPOSE = ("torchinductor_",)  # torch's compile cache lives in TMPDIR by design, for every later process


class BudgetService:
    """`fedcare budget serve` on a fixed port and SQLite file, so a restart is the same service."""

    def __init__(self, workdir: Path) -> None:
        self.database_url = f"sqlite:///{workdir / 'ledger.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._running: AbstractContextManager[str] | None = None
        self.pids: set[int] = set()

    @property
    def up(self) -> bool:
        return self._running is not None

    def start(self) -> None:
        if self._running is None:
            running = running_budget_service(database_url=self.database_url, admin_token=ADMIN_TOKEN, port=self.port)
            running.__enter__()
            self._running = running
            self.pids |= {p.pid for p in psutil.Process().children() if f"{self.port}" in " ".join(p.cmdline())}

    def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            running.__exit__(None, None, None)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the service is down until `start`."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop()


class ChaosBed:
    """One federation and one budget service, for one trial or several runs in a row."""

    def __init__(self, workdir: Path, split: DemoSplit) -> None:
        self.workdir, self.split = workdir, split
        self.runs = workdir / "runs"
        self.tmp = workdir / "tmp"
        self.budget = BudgetService(workdir)
        self.fed = LocalFederation(workdir / "fed")
        self.nodes: dict[str, ManagedProcess] = {}
        self.keys: KeyFiles | None = None
        self.token_file = workdir / "aggregator-token"
        self._saved_tmp: tuple[str | None, str | None] = (None, None)
        self.outlived: list[int] = []

    def chaos_file(self, name: str) -> Path:
        """What `bench/chaos_client.py` reads to know whether this hospital corrupts its updates."""
        return self.workdir / f"chaos-{name}.json"

    def state_dir(self, name: str) -> Path:
        return self.workdir / f"state-{name}"

    def __enter__(self) -> ChaosBed:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._saved_tmp = (os.environ.get("TMPDIR"), tempfile.tempdir)
        os.environ["TMPDIR"], tempfile.tempdir = str(self.tmp), str(self.tmp)
        try:
            self._start()
        except BaseException:  # `with` runs no __exit__ for a failed __enter__: what started must stop here
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        self.keys = write_keys(self.workdir / "he")
        self.budget.start()
        with BudgetAdmin(self.budget.url, ADMIN_TOKEN) as admin:
            for name in HOSPITALS:
                admin.ensure_institution(name, EPSILON_LIMIT, 1e-5)
            self.token_file.write_text(admin.create_aggregator_token("chaos"))
        self.fed.__enter__()
        self.fed.start_superlink()
        for name in HOSPITALS:
            self.start_hospital(name)
        for proc in self.nodes.values():
            self.fed.wait_for_node(proc)

    def start_hospital(self, name: str) -> ManagedProcess:
        """Start (or restart, same kit and state) a hospital's node, without waiting for it."""
        assert self.keys is not None
        config = {
            "state-dir": str(self.state_dir(name)),
            "he-secret-context": str(self.keys.hospital_context),
            "chaos-file": str(self.chaos_file(name)),
            "epsilon-limit": EPSILON_LIMIT,
        }
        path = self.split.hospital_paths[HOSPITALS.index(name)]
        self.nodes[name] = self.fed.add_hospital(institution=name, data_path=path, node_config=config, wait=False)
        return self.nodes[name]

    def run_config(self, mode: str, *, rounds: int, app_run_dir: Path | None = None) -> dict[str, Any]:
        assert self.keys is not None
        config: dict[str, Any] = {
            "num-rounds": rounds,
            "local-epochs": 1,
            "schema-path": str(self.split.schema_path),
            "results-dir": str(self.runs),
            "budget-url": self.budget.url,
            "budget-token-file": str(self.token_file),
            "privacy-mode": mode,
        }
        if mode == "he":
            config["he-public-context"] = str(self.keys.server_context)
        return config

    def drain_outbox(self) -> int:
        """Deliver what the ServerApps kept in the outbox; the events still waiting."""
        self.budget.start()
        # A service just restarted imports Opacus for its first write (seconds, tens of them at the soak's load):
        # the check waits for it rather than counting a slow first answer as a lost event.
        client = BudgetEventClient(
            self.budget.url, self.token_file.read_text().strip(), outbox_dir=self.runs / "budget-outbox", timeout=60.0
        )
        with client:
            client.flush_outbox()
            return client.pending()

    def admin(self) -> BudgetAdmin:
        return BudgetAdmin(self.budget.url, ADMIN_TOKEN)

    def __exit__(self, *exc: object) -> None:
        """Stop everything, also when a trial failed or was interrupted. What outlived the stop is noted (a leak
        the soak reports, `leftovers`) and then killed, so no process outlives the bed either way."""
        try:
            self.fed.__exit__(*exc)
        finally:
            try:
                self.budget.stop()
            finally:
                self.outlived = self._alive()
                self.fed.reap_sessions()
                env, cached = self._saved_tmp
                if env is None:
                    os.environ.pop("TMPDIR", None)
                else:
                    os.environ["TMPDIR"] = env
                tempfile.tempdir = cached

    def _alive(self) -> list[int]:
        """Processes of the bed still running: any it saw, and any left in a session its federation started."""
        alive = {p.pid for p in self.fed.session_members()}
        for pid in self.fed.seen_pids | self.budget.pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(alive)

    def leftovers(self) -> dict[str, list[Any]]:
        """After exit: processes that outlived the stop (killed since) and files left in the bed's TMPDIR."""
        temp = sorted(p.name for p in self.tmp.iterdir() if not p.name.startswith(KEPT_ON_PURPOSE))
        return {"processes": self.outlived, "temp": temp}
