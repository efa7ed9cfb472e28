"""Flower's own SuperNode, with its fixed waits retuned: `python -m fedcare.fast_supernode [WAITS] -- ARGS`.

ARGS go to `flower-supernode` unchanged. `fedcare node start` runs this next to the warm executor; the
waits and why they matter are in `fedcare.flower_internals.SuperNodeWaits`.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable

from fedcare.flower_internals import SuperNodeWaits, run_flower_supernode, tune_supernode_waits


def wait_args(waits: SuperNodeWaits) -> list[str]:
    """The command-line form of `waits`, for this module's own parser."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in vars(waits).items()]


def parse(argv: list[str]) -> tuple[SuperNodeWaits, str | None, list[str]]:
    ours, flower = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m fedcare.fast_supernode", allow_abbrev=False)
    for name, value in vars(SuperNodeWaits()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    parser.add_argument("--notify-socket", help="a UNIX datagram socket told of every stored message")
    args = vars(parser.parse_args(ours))
    notify = args.pop("notify_socket")
    return SuperNodeWaits(**args), notify, flower


def notifier(path: str) -> Callable[[], None]:
    """Tell the warm executor listening at `path` that a task is waiting (lost if it is not listening yet:
    it also polls, slowly)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def notify() -> None:
        try:
            sock.sendto(b"t", path)
        except OSError:
            pass

    return notify


def main(argv: list[str] | None = None) -> None:
    waits, notify, flower_args = parse(sys.argv[1:] if argv is None else argv)
    tune_supernode_waits(waits, on_message=None if notify is None else notifier(notify))
    run_flower_supernode(flower_args)


if __name__ == "__main__":
    main()
