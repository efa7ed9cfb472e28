"""Flower's own SuperNode, with its fixed waits retuned: `python -m fedcare.fast_supernode [WAITS] -- ARGS`.

ARGS go to `flower-supernode` unchanged. `fedcare node start` runs this next to the warm executor; the
waits and why they matter are in `fedcare.flower_internals.SuperNodeWaits`.
"""

from __future__ import annotations

import argparse

from fedcare.flower_internals import SuperNodeWaits, run_flower_supernode, tune_supernode_waits


def wait_args(waits: SuperNodeWaits) -> list[str]:
    """The command-line form of `waits`, for this module's own parser."""
    return [
        f"--fleet-poll={waits.fleet_poll}",
        f"--reply-wait={waits.reply_wait}",
        f"--pull-backoff={waits.pull_backoff}",
        f"--pull-backoff-cap={waits.pull_backoff_cap}",
    ]


def parse(argv: list[str]) -> tuple[SuperNodeWaits, list[str]]:
    ours, flower = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    default = SuperNodeWaits()
    parser = argparse.ArgumentParser(prog="python -m fedcare.fast_supernode", allow_abbrev=False)
    for name, value in vars(default).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    return SuperNodeWaits(**vars(parser.parse_args(ours))), flower


def main(argv: list[str] | None = None) -> None:
    import sys

    waits, flower_args = parse(sys.argv[1:] if argv is None else argv)
    tune_supernode_waits(waits)
    run_flower_supernode(flower_args)


if __name__ == "__main__":
    main()
