"""Flower's own SuperNode, with its fixed waits retuned: `python -m fedcare.fast_supernode [WAITS] -- ARGS`.

ARGS go to `flower-supernode` unchanged. `fedcare node start` runs this next to the warm executor; the
waits and why they matter are in `fedcare.flower_internals.SuperNodeWaits`. When the SuperLink turns the
node's key away for good (revoked), it stops with `NODE_REFUSED_EXIT` and says so, where Flower 1.39
would exit 0 as after Ctrl-C, or 1 and be restarted by a supervisor to be refused again.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

from fedcare.flower_internals import (
    Refusal,
    SuperNodeWaits,
    run_flower_supernode,
    stop_when_refused,
    tune_supernode_waits,
)

NODE_REFUSED_EXIT = 77  # sysexits' EX_NOPERM: the SuperLink refuses this node's key (revoked, or not registered)


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


def refusal_message(refusal: Refusal) -> str:
    """What a hospital's operator reads when the SuperLink turns the node away, and what to do."""
    if refusal.revoked:
        why = (
            f"this node was REVOKED: the SuperLink no longer knows its key ({refusal.flower_error}); the "
            "coordinator removed it (`fedcare institution revoke`)"
        )
    else:
        why = (
            f"the SuperLink refused this node's key for {refusal.seconds:.0f} s ({refusal.flower_error}): the "
            "institution was REVOKED, or its registration is not complete (the coordinator's `fedcare federation "
            "sync` finishes it)"
        )
    return (
        f"fedcare node: {why}. The node stops (exit code {NODE_REFUSED_EXIT}) instead of retrying; to take "
        "part again, ask the coordinator to register the institution and install the kit it issues."
    )


def stop_refused(refusal: Refusal) -> NoReturn:
    """End the process at once: Flower's own exit path would report a graceful stop (code 0)."""
    sys.stderr.write(refusal_message(refusal) + "\n")
    sys.stderr.flush()
    os._exit(NODE_REFUSED_EXIT)


def main(argv: list[str] | None = None) -> None:
    waits, notify, flower_args = parse(sys.argv[1:] if argv is None else argv)
    stop_when_refused(waits, stop_refused)  # first: the guard checks Flower as it ships, before the waits' patch
    tune_supernode_waits(waits, on_message=None if notify is None else notifier(notify))
    run_flower_supernode(flower_args)


if __name__ == "__main__":
    main()
