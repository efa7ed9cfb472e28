"""Flower's own SuperLink, with long polls: `python -m fedcare.fast_superlink [--fleet-hold S] -- ARGS`.

ARGS go to `flower-superlink` unchanged. An empty pull, a hospital's for its next message or a ServerApp's
for its replies, is held until something arrives for it or the hold ends (`fedcare.flower_internals.superlink`
says why): a message is met the moment it is stored, and an idle federation costs the SuperLink next to no CPU.
"""

from __future__ import annotations

import argparse
import sys

from fedcare.flower_internals.superlink import hold_empty_pulls, run_flower_superlink

# Seconds. Longer holds save little more (an idle node then polls once a second), and a held request may delay
# the SuperLink's exit by as long: Python joins the threads that serve them.
FLEET_HOLD = 1.0
SERVERAPP_HOLD = 1.0


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ours, flower = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m fedcare.fast_superlink", allow_abbrev=False)
    parser.add_argument("--fleet-hold", type=float, default=FLEET_HOLD, help="s a hospital's empty poll is held")
    parser.add_argument(
        "--serverapp-hold", type=float, default=SERVERAPP_HOLD, help="s a ServerApp's empty reply pull or claim is held"
    )
    return parser.parse_args(ours), flower


def main(argv: list[str] | None = None) -> None:
    args, flower_args = parse(sys.argv[1:] if argv is None else argv)
    hold_empty_pulls(fleet_hold=args.fleet_hold, serverapp_hold=args.serverapp_hold)
    run_flower_superlink(flower_args)


if __name__ == "__main__":
    main()
