"""Where a local federation's sites run: all on this host's loopback, or each on a host of its own.

`LocalFederation` starts the coordinator's processes (SuperLink, ServerApp executor, the `flwr` CLI) and
every hospital's node. By default they all share this host's 127.0.0.1 (`Loopback`). A placement can
instead run each site behind a command prefix (e.g. `ip netns exec NS`, one network namespace per site,
as the multi-site tests do) and route each hospital to the coordinator by its own address, so the same
federation code crosses real network boundaries.
"""

from __future__ import annotations

from typing import Protocol

from fedcare.processes import tcp_open

COORDINATOR = "coordinator"  # the site name of the coordinator's processes; hospitals go by institution name


class Placement(Protocol):
    @property
    def fleet_bind(self) -> str:
        """The address the SuperLink's Fleet API listens on, at the coordinator's site."""
        ...

    def prefix(self, site: str) -> tuple[str, ...]:
        """The command prefix that runs a program at `site` (COORDINATOR or an institution's name)."""
        ...

    def fleet_address(self, institution: str, port: int) -> str:
        """What `institution`'s SuperNode dials to reach the Fleet API listening on `port`."""
        ...

    def port_open(self, site: str, host: str, port: int) -> bool:
        """Whether `host:port` accepts a TCP connection, as seen from `site`."""
        ...


class Loopback:
    """Every site on this host: no prefix, everything on 127.0.0.1."""

    fleet_bind = "127.0.0.1"

    def prefix(self, site: str) -> tuple[str, ...]:
        return ()

    def fleet_address(self, institution: str, port: int) -> str:
        return f"127.0.0.1:{port}"

    def port_open(self, site: str, host: str, port: int) -> bool:
        return tcp_open(host, port)
