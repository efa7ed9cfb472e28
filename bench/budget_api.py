"""Budget service load: budget reads and durable event writes per second, on SQLite and PostgreSQL.

For each database, and for each worker count in --workers, the service runs as
a real process (`fedcare budget serve --workers N`) on 127.0.0.1, as
`running_budget_service` starts it, and is measured once Opacus is loaded. The
load generator is this process: one asyncio loop speaking HTTP/1.1 over
keep-alive sockets (a few microseconds per request, so it leaves the second
core to the service). Phases, each bounded by --seconds:

- reads_max: closed loop, --read-concurrency connections, GET
  /v1/institutions/{id}/budget round-robin over the institutions.
- reads_at_rate: open loop at --read-rate requests/s; a request's latency counts
  from when it was due, so queueing is not hidden (no coordinated omission).
- writes: closed loop, --write-concurrency connections, POST /v1/events with one
  new event each; a 200 means the event is committed (SQLite WAL with
  synchronous=FULL, PostgreSQL with synchronous_commit on) and recomputed.
- batch_writes: the same with --batch events per request.

Each institution starts with --seed-events events, so reads and writes work on
a ledger that is not empty. Each phase also records `other_cpu_cores`: the CPU
that processes other than the service, its database and this load generator
used meanwhile (the machine may be shared); numbers taken while it is high
understate what the service can do.

    python bench/budget_api.py --seconds 8

Prints a JSON object on stdout and writes bench/out/budget_api.json; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/budget_api.py` from a checkout

from server.budget.process import running_budget_service  # noqa: E402
from server.budget_client.admin import BudgetAdmin  # noqa: E402
from server.budget_client.events import BudgetEventClient  # noqa: E402
from tests.support.local_postgres import running_postgres  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-" + "x" * 24
INSTITUTIONS = 8
GOALS = {"reads_per_s": 1000, "read_p99_ms": 20.0, "writes_per_s": 200}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for this service's JSON replies."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        try:
            return await self._exchange(method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):  # the server closed an idle socket: reconnect once
            self.close()
            await self.open()
            return await self._exchange(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> int:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        length = 0
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def summary(latencies: list[float], errors: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 2),
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        **extra,
    }


async def closed_loop(url: str, token: str, *, concurrency: int, seconds: float, make_request) -> dict[str, Any]:
    parts = urlsplit(url)
    conns = [Connection(parts.hostname, parts.port, token) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection, index: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            method, path, body = make_request(index, n)
            start = time.perf_counter()
            status = await conn.request(method, path, body)
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - began
    for c in conns:
        c.close()
    return summary(latencies, errors, elapsed, concurrency=concurrency)


async def open_loop(
    url: str, token: str, *, rate: float, seconds: float, make_request, pool: int = 64
) -> dict[str, Any]:
    parts = urlsplit(url)
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(pool):
        conn = Connection(parts.hostname, parts.port, token)
        await conn.open()
        free.put_nowait(conn)
    latencies: list[float] = []
    errors = 0

    async def one(due: float, n: int) -> None:
        nonlocal errors
        conn = await free.get()
        method, path, body = make_request(0, n)
        status = await conn.request(method, path, body)
        latencies.append(time.perf_counter() - due)  # from when it was due: queueing counts
        errors += status != 200
        free.put_nowait(conn)

    began = time.perf_counter()
    total = int(rate * seconds)
    tasks = []
    for n in range(total):
        due = began + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, n)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    while not free.empty():
        free.get_nowait().close()
    return summary(latencies, errors, elapsed, target_per_s=rate, pool=pool)


class CpuWatch:
    """CPU used by everything else on the machine while a phase runs, in cores."""

    def __init__(self, port: int) -> None:
        self.port = str(port)

    def _ours(self) -> list[psutil.Process]:
        procs = [psutil.Process()]
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if (self.port in cmd and "budget" in cmd) or (p.info["name"] or "").startswith("postgres"):
                procs.append(p)
                procs.extend(p.children(recursive=True))
        return procs

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.system + t.nice + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def __enter__(self) -> CpuWatch:
        self.procs = self._ours()
        self.start = (time.perf_counter(), self._busy(), self._cpu(self.procs))
        return self

    def __exit__(self, *_: object) -> None:
        wall, busy, ours = time.perf_counter(), self._busy(), self._cpu(self.procs)
        self.other_cores = max(0.0, ((busy - self.start[1]) - (ours - self.start[2])) / (wall - self.start[0]))
        self.our_cores = (ours - self.start[2]) / (wall - self.start[0])


def event(institution: str, run: str, server_round: int) -> dict[str, Any]:
    return {
        "run_id": run,
        "server_round": server_round,
        "institution": institution,
        "noise_multiplier": 1.0,
        "sample_rate": 0.02,
        "steps": 50,
        "accountant": "rdp",
        "epsilon": 1e6,
        "delta": 1e-5,
    }


def bench_backend(name: str, database_url: str, workers: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    log(f"[{name}] starting the service ({workers} worker(s)) on {database_url.split('@')[-1]}")
    with running_budget_service(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        log_level="warning",
        workers=workers,
        wait_for_accounting=True,
        log_path=out / f"budget_api-{name}.log",
    ) as url:
        admin = BudgetAdmin(url, ADMIN_TOKEN, timeout=30)
        seeder = BudgetEventClient(url, ADMIN_TOKEN, timeout=30)
        names = [f"hospital-{i}" for i in range(1, INSTITUTIONS + 1)]
        ids = [admin.ensure_institution(n, 1e9, 1e-5).id for n in names]
        token = admin.create_aggregator_token("bench")
        for n in names:
            for start in range(1, args.seed_events + 1, 500):
                seeder.post_events([event(n, "seed", r) for r in range(start, min(args.seed_events, start + 499) + 1)])
        budget_paths = [f"/v1/institutions/{i}/budget" for i in ids]

        def read(index: int, n: int):
            return "GET", budget_paths[(index + n) % len(budget_paths)], b""

        def write(index: int, n: int):
            return "POST", "/v1/events", json.dumps(event(names[index % len(names)], f"w{index}", n + 1)).encode()

        def batch_write(index: int, n: int):
            body = [event(names[index % len(names)], f"b{index}-{n}", r) for r in range(1, args.batch + 1)]
            return "POST", "/v1/events", json.dumps(body).encode()

        # A short warm-up so the first phase doesn't pay for imports and caches.
        asyncio.run(closed_loop(url, token, concurrency=2, seconds=1.0, make_request=read))
        result: dict[str, Any] = {}
        for phase, runner in (
            (
                "reads_max",
                lambda: closed_loop(
                    url, token, concurrency=args.read_concurrency, seconds=args.seconds, make_request=read
                ),
            ),
            (
                "reads_at_rate",
                lambda: open_loop(url, token, rate=args.read_rate, seconds=args.seconds, make_request=read),
            ),
            (
                "writes",
                lambda: closed_loop(
                    url, token, concurrency=args.write_concurrency, seconds=args.seconds, make_request=write
                ),
            ),
            (
                "batch_writes",
                lambda: closed_loop(url, token, concurrency=2, seconds=args.seconds, make_request=batch_write),
            ),
        ):
            with CpuWatch(urlsplit(url).port) as watch:
                result[phase] = asyncio.run(runner())
            result[phase]["other_cpu_cores"] = round(watch.other_cores, 2)
            result[phase]["bench_cpu_cores"] = round(watch.our_cores, 2)
            log(
                f"[{name}] {phase}: {result[phase]['per_s']}/s p50 {result[phase]['p50_ms']} ms "
                f"p99 {result[phase]['p99_ms']} ms errors {result[phase]['errors']} "
                f"(other processes: {watch.other_cores:.2f} cores)"
            )
        result["batch_writes"]["events_per_s"] = round(result["batch_writes"]["per_s"] * args.batch, 1)
        result["batch_writes"]["batch"] = args.batch
        stored = sum(b.rounds for b in admin.budgets().values())
        result["events_stored"] = stored
        admin.close()
    reads, at_rate, writes = result["reads_max"], result["reads_at_rate"], result["writes"]
    result["goals"] = {
        "reads_per_s_at_least_1000": reads["per_s"] >= GOALS["reads_per_s"],
        "p99_under_20ms_at_1000_reads_per_s": at_rate["p99_ms"] < GOALS["read_p99_ms"] and at_rate["errors"] == 0,
        "writes_per_s_at_least_200": writes["per_s"] >= GOALS["writes_per_s"] and writes["errors"] == 0,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--read-concurrency", type=int, default=16)
    parser.add_argument("--read-rate", type=float, default=1000.0)
    parser.add_argument("--write-concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed-events", type=int, default=200, help="events per institution before the phases")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts to measure, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "benchmark": "budget_api",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg(),
            "fastapi": version("fastapi"),
            "uvicorn": version("uvicorn"),
            "sqlalchemy": version("sqlalchemy"),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "goals": GOALS,
        "results": {},
    }
    backends = args.backends.split(",")
    worker_counts = [int(w) for w in args.workers.split(",")]
    if "sqlite" in backends:
        for workers in worker_counts:
            db = args.out / "budget_api.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            name = f"sqlite/{workers}-worker"
            report["results"][name] = bench_backend(name.replace("/", "-"), f"sqlite:///{db}", workers, args, args.out)
    if "postgresql" in backends:
        with running_postgres() as pg:
            for workers in worker_counts:
                name = f"postgresql/{workers}-worker"
                database = pg.create_database(f"budget_bench_{workers}")
                report["results"][name] = bench_backend(name.replace("/", "-"), database, workers, args, args.out)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    (args.out / "budget_api.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
