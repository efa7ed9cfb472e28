"""Sites on hosts of their own, on one machine: one Linux network namespace per site, linked by a bridge.

```
NS-bridge        br0, one veth port per site below
NS-coordinator   eth0 10.77.0.1/24    the SuperLink; its Fleet API listens on 10.77.0.1 (control API: loopback)
NS-relay         eth0 10.77.0.2/24    tcp_relay.py: +40 ms round trip, cuts now and then, bytes per hospital
NS-<hospital>    eth0 10.77.0.(10+i)  its node; tbf holds its link to ~20 Mbit/s each way (both veth ends)
```
A hospital's node dials the relay (`fleet_address`), the relay dials the coordinator: every byte a
hospital exchanges crosses its slow link twice and the relay once. The SuperLink's certificate must name
the relay's address (`SANS`). `Topology` is a `fedcare.placement.Placement`, so `LocalFederation` runs
each site's processes inside its namespace (`ip netns exec NS`, which execs: the pid stays the same).

Namespace names are `fcnet-<owner pid>-<token>-<site>`: concurrent sessions never collide, and
`sweep_leftovers` removes, at the start of a session, what a killed session left (its owner is gone).
`close` kills every process still inside a namespace, then deletes the namespaces, which takes the
bridge and every veth with them; it runs from fixture finalizers, so also after a failure.
Needs root (CI runs as root). Without it `require_netns` raises `NetnsUnavailable` naming what is missing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedcare.placement import COORDINATOR

log = logging.getLogger("tests.netns")
PREFIX = "fcnet"
SUBNET = "10.77.0"
COORDINATOR_IP, RELAY_IP = f"{SUBNET}.1", f"{SUBNET}.2"
SANS = ("localhost", "127.0.0.1", COORDINATOR_IP, RELAY_IP)  # what the SuperLink's certificate must name
RELAY_SCRIPT = Path(__file__).with_name("tcp_relay.py")
RELAY = "relay"
CLONE_NEWNET = 0x40000000


class NetnsUnavailable(RuntimeError):
    """This machine cannot build the topology: not root, or no `ip netns` / veth / bridge / tbf."""


def _run(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def require_netns() -> None:
    """Fail loudly (never skip) when the multi-site tests cannot run here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "the multi-site tests build network namespaces, veth pairs, a bridge and tbf qdiscs, which needs "
            f"root (running as uid {os.geteuid()}); run them as root, as CI does"
        )
    try:
        _run("ip", "netns", "list")
        _run("tc", "-V")
    except FileNotFoundError as exc:
        raise NetnsUnavailable(f"{exc.filename} is missing: install iproute2") from None


def namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def _owner_alive(name: str) -> bool:
    try:
        return psutil.pid_exists(int(name.split("-")[1]))
    except (IndexError, ValueError):
        return False


def _pids(namespace: str) -> list[int]:
    done = _run("ip", "netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_processes_in(namespace: str) -> None:
    procs = []
    for pid in _pids(namespace):
        try:
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def destroy(names: list[str]) -> list[str]:
    """Kill what runs in each namespace, then delete it; the namespaces still present afterwards."""
    for name in names:
        kill_processes_in(name)
    for name in names:
        _run("ip", "netns", "del", name, check=False)
    left = set(namespaces())
    return [name for name in names if name in left]


def sweep_leftovers() -> list[str]:
    """Remove the namespaces (with their bridge, veths and processes) of sessions that no longer run."""
    stale = [n for n in namespaces() if n.startswith(f"{PREFIX}-") and not _owner_alive(n)]
    if stale:
        log.warning("removing %d namespaces left by an earlier session: %s", len(stale), stale)
        destroy(stale)
    return stale


@dataclass(frozen=True)
class SiteNet:
    site: str
    namespace: str
    address: str


@dataclass
class Topology:
    """The namespaces of one run, and the relay between the hospitals and the coordinator."""

    workdir: Path
    bridge: str
    coordinator: SiteNet
    relay: SiteNet
    hospitals: dict[str, SiteNet]
    relay_proc: subprocess.Popen[bytes] | None = None
    relay_args: list[str] = field(default_factory=list)

    # ---- fedcare.placement.Placement --------------------------------------
    @property
    def fleet_bind(self) -> str:
        return self.coordinator.address

    def site(self, name: str) -> SiteNet:
        if name == COORDINATOR:
            return self.coordinator
        return self.relay if name == RELAY else self.hospitals[name]

    def prefix(self, site: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.site(site).namespace)

    def fleet_address(self, institution: str, port: int) -> str:
        return f"{self.relay.address}:{port}"  # the relay listens on the Fleet API's port number

    def port_open(self, site: str, host: str, port: int) -> bool:
        probe = f"exec 3<>/dev/tcp/{host}/{port}"  # bash's own connect: no interpreter start per probe
        return _run(*self.prefix(site), "bash", "-c", probe, check=False, timeout=5).returncode == 0

    @contextmanager
    def entered(self, site: str) -> Iterator[None]:
        """Run the calling thread inside `site`'s namespace: the coordinator's own calls to a service that listens
        only there (the budget service), and children it starts meanwhile, as on the coordinator's host. Sockets
        made meanwhile stay in that namespace; other threads never leave the root namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.site(site).namespace}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise NetnsUnavailable(f"setns into {site}'s namespace failed: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise NetnsUnavailable(f"setns back home failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(home)
            os.close(target)

    # ---- the relay ------------------------------------------------------------
    @property
    def counters_path(self) -> Path:
        return self.workdir / "relay-counters.json"

    def start_relay(self, port: int, *, delay: float = 0.02, cut_every: float = 0.0, outage: float = 1.0) -> None:
        """Relay `RELAY_IP:port` to the coordinator's `port`, adding `delay` each way and cutting a connection
        every `cut_every` s on average (0: only on `cut_all`)."""
        args = [*self.prefix(RELAY), sys.executable, str(RELAY_SCRIPT)]
        args += ["--listen", f"{self.relay.address}:{port}", "--target", f"{self.coordinator.address}:{port}"]
        args += [f"--site={h.address}={h.site}" for h in self.hospitals.values()]
        args += ["--delay", str(delay), "--cut-every", str(cut_every), "--outage", str(outage)]
        args += ["--counters", str(self.counters_path)]
        self.stop_relay()
        log_file = (self.workdir / "relay.log").open("ab")
        self.relay_args = args
        self.relay_proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + 30
        while not (self.port_open(RELAY, self.relay.address, port) and self.counters_path.exists()):
            if self.relay_proc.poll() is not None or time.monotonic() > deadline:
                text = (self.workdir / "relay.log").read_text(errors="replace")[-2000:]
                raise NetnsUnavailable(f"the relay did not start:\n{text}")
            time.sleep(0.1)

    def cut_all(self) -> None:
        """Reset every open hospital connection now (the hospitals then wait out the relay's outage)."""
        if self.relay_proc is None:
            raise RuntimeError("start the relay first")
        self.relay_proc.send_signal(signal.SIGUSR1)

    def counters(self) -> dict[str, Any]:
        """The relay's counters: {"sites": {name: {up, down, connections, cuts, refused}}, "cuts": [...]}."""
        return json.loads(self.counters_path.read_text())

    def stop_relay(self) -> None:
        if self.relay_proc is not None and self.relay_proc.poll() is None:
            self.relay_proc.terminate()
            try:
                self.relay_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.relay_proc.kill()
                self.relay_proc.wait()

    # ---- what runs where ------------------------------------------------------
    def all_sites(self) -> list[SiteNet]:
        return [self.coordinator, self.relay, *self.hospitals.values()]

    def memory_by_site(self) -> dict[str, dict[str, int]]:
        """Memory (bytes) of every process inside each site's namespace, summed per site: `rss`, and `pss`
        (shared pages split among the processes sharing them: forked ClientApps share most of torch)."""
        totals = {}
        for site in self.all_sites():
            rss = pss = 0
            for pid in _pids(site.namespace):
                try:
                    info = psutil.Process(pid).memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + getattr(info, "pss", 0)
            totals[site.site] = {"rss": rss, "pss": pss}
        return totals

    def close(self) -> None:
        """Stop the relay, kill what still runs in the namespaces, delete them; raise if any survived."""
        self.stop_relay()
        left = destroy([s.namespace for s in self.all_sites()] + [self.bridge])
        if left:
            raise NetnsUnavailable(f"namespaces still present after cleanup: {left}")


def build_topology(hospitals: list[str], *, workdir: Path, rate: str = "20mbit") -> Topology:
    """Namespaces, bridge, veths, addresses and `rate` limits for a coordinator, the relay and `hospitals`.

    On any failure, what was made so far is removed before the error propagates."""
    require_netns()
    workdir.mkdir(parents=True, exist_ok=True)
    base = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
    topology = Topology(
        workdir,
        bridge=f"{base}-bridge",
        coordinator=SiteNet(COORDINATOR, f"{base}-{COORDINATOR}", COORDINATOR_IP),
        relay=SiteNet(RELAY, f"{base}-{RELAY}", RELAY_IP),
        hospitals={name: SiteNet(name, f"{base}-{name}", f"{SUBNET}.{10 + i}") for i, name in enumerate(hospitals)},
    )
    made: list[str] = []
    try:
        for ns in (topology.bridge, *(s.namespace for s in topology.all_sites())):
            _run("ip", "netns", "add", ns)
            made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        br = ("ip", "-n", topology.bridge)
        _run(*br, "link", "add", "br0", "type", "bridge")
        _run(*br, "link", "set", "br0", "up")
        for index, site in enumerate(topology.all_sites()):
            port = f"p{index}"
            # Made inside the two namespaces at once: no name ever exists in the root namespace.
            _run(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                site.namespace,
                "type",
                "veth",
                "peer",
                port,
                "netns",
                topology.bridge,
            )
            _run(*br, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", site.namespace, "addr", "add", f"{site.address}/24", "dev", "eth0")
            _run("ip", "-n", site.namespace, "link", "set", "eth0", "up")
            if site.site in topology.hospitals:  # hospital uploads leave by eth0, downloads by the bridge's port
                for ns, dev in ((site.namespace, "eth0"), (topology.bridge, port)):
                    _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", *_tbf(rate))
    except BaseException:
        destroy(made)
        raise
    return topology


def _tbf(rate: str) -> tuple[str, ...]:
    """A token bucket: `rate` on average, 32 KB bursts, packets that would wait over 50 ms are dropped."""
    return ("rate", rate, "burst", "32kb", "latency", "50ms")
