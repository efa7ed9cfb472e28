"""Every place fedcare reaches past Flower's public API, for the pinned flwr 1.39.0, in one package.

Flower 1.39 spends a round's seconds in fixed waits (FIELD-NOTES, "Where a 1.39 message exchange spends
its seconds") and starts a fresh `flwr-clientapp` process per message. fedcare does not fork Flower;
instead, at the hospital:

* the SuperNode runs in a fedcare process that retunes its fixed sleeps (`time.sleep(3)` between idle
  fleet polls, `time.sleep(0.5)` while it waits for a ClientApp's reply) and the object-pull back-off
  (1 s doubling to 10 s), beats its heartbeat faster (a dead node is noticed within 20 s, not 60 s), and
  stops with a reason when the SuperLink turns its key away, before it calls Flower's own
  `flower_supernode()` main (`supernode.py`; `orphaned_tasks.py` fails the tasks a stopped run leaves behind;
  `reply_gate.py` sends one complete reply per message, so a ClientApp killed mid-upload delays nothing);
* the warm executor claims ClientApp tasks from the SuperNode's runtime API and runs Flower's own
  `run_clientapp` in a forked child, learning the message it serves so it can still answer when that
  child dies (`tasks.py`);
* the ServerApp's last log flush waits for its final push instead of sleeping a fixed second (`log_flush.py`);
* both apps' processes send a message's content as one object, not one per record, array and chunk
  (`flat_records.py`);
* the SuperLink (`fedcare.fast_superlink`) holds an empty poll until something comes for its asker
  (`superlink.py`).

`guard.check_pinned_flower()` says, symbol by symbol, what of this no longer holds; `tests/fedcare/
test_flower_internals.py` fails on it, and `tune_supernode_waits` refuses to start on it, so an upgraded
Flower fails loudly instead of silently going slow (or worse). Nothing here may import `client`,
`common` or `server`: the warm executor imports this module before it forks, and Flower's `load_app`
would run a pre-imported copy instead of the app the run ships.
"""

from fedcare.flower_internals.guard import (
    _PULL_HELPERS,
    ACTIVATION_REFUSED,
    FLEET_POLL_SLEEP,
    OFFLINE_AFTER,
    PINNED_FLWR,
    REPLY_WAIT_SLEEP,
    REVOKED_DETAILS,
    SUPERLINK_MIN_HEARTBEAT,
    FlowerInternalsChanged,
    check_pinned_flower,
)
from fedcare.flower_internals.reply_gate import ReplyGate
from fedcare.flower_internals.supernode import (
    Refusal,
    SuperNodeWaits,
    run_flower_supernode,
    stop_when_refused,
    tune_heartbeat,
    tune_object_pull_backoff,
    tune_supernode_waits,
)
from fedcare.flower_internals.tasks import RuntimeApi, ServedMessage, answer_failed_task, run_task, tell_when_pulled

__all__ = [
    "ACTIVATION_REFUSED",
    "FLEET_POLL_SLEEP",
    "OFFLINE_AFTER",
    "PINNED_FLWR",
    "REPLY_WAIT_SLEEP",
    "REVOKED_DETAILS",
    "SUPERLINK_MIN_HEARTBEAT",
    "_PULL_HELPERS",
    "FlowerInternalsChanged",
    "Refusal",
    "ReplyGate",
    "RuntimeApi",
    "ServedMessage",
    "SuperNodeWaits",
    "answer_failed_task",
    "check_pinned_flower",
    "run_flower_supernode",
    "run_task",
    "tell_when_pulled",
    "stop_when_refused",
    "tune_heartbeat",
    "tune_object_pull_backoff",
    "tune_supernode_waits",
]
