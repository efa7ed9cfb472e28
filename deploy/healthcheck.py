"""Container healthchecks, with nothing but the standard library and the grpc the image already has.

    healthcheck.py tcp HOST:PORT [HOST:PORT ...]   every port accepts a connection
    healthcheck.py grpc HOST:PORT                  a gRPC health service (Flower's --health-server-address) says SERVING
    healthcheck.py http URL                        the URL answers 200
    healthcheck.py https URL CA_FILE               the URL answers 200 over TLS verified against CA_FILE

Exit 0 when healthy, 1 otherwise, with one line saying why (docker inspect shows it).
"""

from __future__ import annotations

import socket
import sys


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_tcp(addresses: list[str]) -> None:
    for address in addresses:
        with socket.create_connection(_split(address), timeout=3):
            pass


def check_grpc(address: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"{address} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}")


def check_http(url: str, ca_file: str | None = None) -> None:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310 (a fixed local URL)
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("tcp", "grpc", "http", "https") or (argv[0] == "https" and len(argv) != 3):
        print(__doc__, file=sys.stderr)
        return 2
    kind, targets = argv[0], argv[1:]
    try:
        if kind == "tcp":
            check_tcp(targets)
        elif kind == "grpc":
            for target in targets:
                check_grpc(target)
        elif kind == "https":
            check_http(targets[0], targets[1])
        else:
            for target in targets:
                check_http(target)
    except Exception as exc:  # noqa: BLE001 (any failure means unhealthy)
        print(f"unhealthy: {kind} {' '.join(targets)}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
