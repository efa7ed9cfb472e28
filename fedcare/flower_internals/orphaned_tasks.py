"""Tasks that Flower 1.39's SuperNode leaves unfinished when a run stops while a message arrives."""

from __future__ import annotations

import logging
from typing import Any

_UNFINISHED = ("pending", "starting", "running")  # flwr.common.constant.Status, less "finished"
log = logging.getLogger("fedcare.node")


def unfinished_tasks(state: Any) -> set[int]:
    if state is None:  # no NodeState passed (tests that stand in for Flower's helper)
        return set()
    return {int(t.task_id) for t in state.get_tasks(statuses=list(_UNFINISHED))}


def fail_orphaned_tasks(state: Any, *, known: set[int]) -> None:
    """Finish, as failed, the tasks a message left behind when it was not stored.

    Flower 1.39 creates a message's task before it pulls the message's objects; when the run stops meanwhile
    (its ServerApp crashed, its SuperLink restarted) it returns without finishing the task. A warm executor
    that claimed the task would wait for objects that never come for PULL_MAX_TIME (2 h) or until its
    message timeout, and this hospital's next messages (a resumed run's) wait behind it. Finishing the task
    revokes its token, so the claiming ClientApp fails at once.
    """
    for task_id in unfinished_tasks(state) - known:
        state.finish_task(task_id, "failed", "fedcare: the run stopped while this task's message was received")
        log.warning("task %d: its run stopped while its message was received; finished as failed", task_id)
