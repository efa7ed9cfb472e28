"""Every place fedcare reaches past Flower's public API, for the pinned flwr 1.39.0, in one module.

Flower 1.39 spends a round's seconds in fixed waits (FIELD-NOTES, "Where a 1.39 message exchange spends
its seconds") and starts a fresh `flwr-clientapp` process per message. fedcare does not fork Flower;
instead, at the hospital:

* the SuperNode runs in a fedcare process that retunes its fixed sleeps (`time.sleep(3)` between idle
  fleet polls, `time.sleep(0.5)` while it waits for a ClientApp's reply) and the object-pull back-off
  (1 s doubling to 10 s) before it calls Flower's own `flower_supernode()` main;
* the warm executor claims ClientApp tasks from the SuperNode's runtime API and runs Flower's own
  `run_clientapp` in a forked child, learning the message it serves so it can still answer when that
  child dies.

The package splits by what is adapted: `pinned` (the version and the symbol-by-symbol check),
`supernode_waits` (the SuperNode's sleeps and back-offs) and `tasks` (claiming and running tasks from a
runtime API). Only modules in this package import Flower's internals.

`check_pinned_flower()` says, symbol by symbol, what of this no longer holds; `tests/fedcare/
test_flower_internals.py` fails on it, and `tune_supernode_waits` refuses to start on it, so an upgraded
Flower fails loudly instead of silently going slow (or worse). Nothing here may import `client`,
`common` or `server`: the warm executor imports this module before it forks, and Flower's `load_app`
would run a pre-imported copy instead of the app the run ships.
"""

from fedcare.flower_internals.pinned import (
    _PULL_HELPERS,
    FLEET_POLL_SLEEP,
    PINNED_FLWR,
    REPLY_WAIT_SLEEP,
    FlowerInternalsChanged,
    check_pinned_flower,
)
from fedcare.flower_internals.supernode_waits import (
    SuperNodeWaits,
    run_flower_supernode,
    tune_object_pull_backoff,
    tune_supernode_waits,
)
from fedcare.flower_internals.tasks import RuntimeApi, ServedMessage, answer_failed_task, run_task

__all__ = [
    "FLEET_POLL_SLEEP",
    "PINNED_FLWR",
    "REPLY_WAIT_SLEEP",
    "_PULL_HELPERS",
    "FlowerInternalsChanged",
    "RuntimeApi",
    "ServedMessage",
    "SuperNodeWaits",
    "answer_failed_task",
    "check_pinned_flower",
    "run_flower_supernode",
    "run_task",
    "tune_object_pull_backoff",
    "tune_supernode_waits",
]
