"""A TCP relay on the hospitals' path to the coordinator that delays, cuts and counts, as a slow, lossy WAN would.

These kernels have no `netem` qdisc, so the relay does in user space what netem would do:
- **Delay.** Every chunk waits `delay` seconds before it is forwarded, in each direction, so the relay adds
  2 x `delay` to the round trip without limiting throughput (chunks in flight overlap, as on a long link).
- **Cuts.** Every `cut_every` seconds on average (exponential gaps, seeded), one open connection is reset
  at both ends (RST, as a NAT or firewall that lost its state would), and its hospital's new connections
  are refused for `outage` seconds: the hospital loses the network and gets it back. SIGUSR1 cuts every
  open connection at once, for tests that need a cut at a known moment.
- **Counts.** Each connection's hospital is known by its source address (`--site IP=NAME`); bytes each way,
  connections, cuts and refusals are counted per hospital and written as JSON to `--counters`
  (atomically, twice a second and at exit).

Standard library only, run as a script (`python tcp_relay.py ...`), so it starts in any namespace fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024
UNKNOWN = "unknown"


@dataclass
class SiteCounters:
    up: int = 0  # hospital -> coordinator bytes
    down: int = 0  # coordinator -> hospital bytes
    connections: int = 0
    cuts: int = 0
    refused: int = 0  # connections reset at once during an outage


@dataclass(eq=False)  # hashed by identity: the relay keeps its open links in a set
class Link:
    site: str
    writers: list[asyncio.StreamWriter]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees a dropped connection, not a goodbye."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.target_host, self.target_port = args.target.rsplit(":", 1)
        self.delay, self.outage = args.delay, args.outage
        self.sites = dict(pair.split("=", 1) for pair in args.site)
        self.counters = {name: SiteCounters() for name in [*self.sites.values(), UNKNOWN]}
        self.refused_until: dict[str, float] = {}
        self.links: set[Link] = set()
        self.log: list[dict[str, object]] = []  # every cut: when, whom
        self.started = time.time()

    def counter_json(self) -> str:
        sites = {name: vars(c) for name, c in self.counters.items() if name != UNKNOWN or c.connections}
        return json.dumps({"sites": sites, "cuts": self.log, "delay": self.delay, "started": self.started})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        site = self.sites.get(writer.get_extra_info("peername")[0], UNKNOWN)
        counters = self.counters[site]
        if time.monotonic() < self.refused_until.get(site, 0.0):
            counters.refused += 1
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, int(self.target_port))
        except OSError:
            reset(writer)
            return
        counters.connections += 1
        link = Link(site, [writer, up_writer])
        self.links.add(link)
        link.tasks = [
            asyncio.create_task(self.pipe(reader, up_writer, lambda n: setattr(counters, "up", counters.up + n))),
            asyncio.create_task(self.pipe(up_reader, writer, lambda n: setattr(counters, "down", counters.down + n))),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self.links.discard(link)
        for w in (writer, up_writer):
            w.close()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count) -> None:  # noqa: ANN001
        """Forward each chunk `delay` seconds after it arrived; reading goes on meanwhile (a long link)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while data := await reader.read(CHUNK):
                count(len(data))
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))
            await delivery
        except (ConnectionError, OSError):
            pass
        finally:
            delivery.cancel()

    def cut(self, link: Link, *, why: str) -> None:
        self.counters[link.site].cuts += 1
        self.refused_until[link.site] = time.monotonic() + self.outage
        self.log.append({"at": round(time.time() - self.started, 3), "site": link.site, "why": why})
        for w in link.writers:
            reset(w)
        for task in link.tasks:
            task.cancel()
        self.links.discard(link)

    def cut_all(self) -> None:
        for link in list(self.links):
            self.cut(link, why="signal")

    async def cut_now_and_then(self, mean_gap: float, seed: int) -> None:
        rng = random.Random(seed)
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / mean_gap))
            if self.links:
                self.cut(rng.choice(sorted(self.links, key=id)), why="random")

    async def write_counters(self, path: str) -> None:
        while True:
            self.dump(path)
            await asyncio.sleep(0.5)

    def dump(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            handle.write(self.counter_json())
        os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    relay = Relay(args)
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(relay.handle, host, int(port), reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, relay.cut_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background = [asyncio.create_task(relay.write_counters(args.counters))]
    if args.cut_every > 0:
        background.append(asyncio.create_task(relay.cut_now_and_then(args.cut_every, args.seed)))
    async with server:
        await stop.wait()
    for task in background:
        task.cancel()
    relay.cut_all()
    relay.dump(args.counters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the hospitals dial")
    parser.add_argument("--target", required=True, help="HOST:PORT of the coordinator's Fleet API")
    parser.add_argument("--site", action="append", default=[], help="IP=NAME: the hospital at this source address")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added each way (round trip: twice this)")
    parser.add_argument("--cut-every", type=float, default=0.0, help="mean seconds between cuts; 0: never")
    parser.add_argument("--outage", type=float, default=1.0, help="seconds a cut hospital's connections are refused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counters", required=True, help="JSON file the counters are written to")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
