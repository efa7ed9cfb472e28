"""The ServerApp's last second: Flower's log flush sleeps a fixed second at the end of every run.

`flwr.superlink.runtime.run_serverapp` ends each run with `flush_logs(log_queue)`, which waits until the
uploader thread has taken every queued line and then sleeps `min(1, remaining)` "to allow the PushLogs call to
complete": a second (often 1.2 s) of every run's elapsed time, whether a line is left or not. Here the flush
asks the uploader to finish instead: it queues the uploader's own stop sentinel and joins the thread, which
pushes what is left and returns as soon as that push completes. Flower's later `stop_log_uploader` then joins
a finished thread. Lines logged between the flush and the end of the run (Flower's debug line about pushing
the task output) stay in the executor's own log, as they would if the SuperLink were slow.
"""

from __future__ import annotations

import importlib
import threading
from queue import Queue
from typing import Any

RUN_SERVERAPP = "flwr.superlink.runtime.run_serverapp"
FLUSH_TIMEOUT = 3.0  # Flower's own flush timeout


class _Uploader:
    thread: threading.Thread | None = None


def _remember(start: Any) -> Any:
    def start_log_uploader(*args: Any, **kwargs: Any) -> threading.Thread:
        _Uploader.thread = start(*args, **kwargs)
        return _Uploader.thread

    start_log_uploader.fedcare_tuned = True  # type: ignore[attr-defined]
    return start_log_uploader


def flush_by_stopping(log_queue: Queue[str | None], timeout: float = FLUSH_TIMEOUT) -> bool:
    """Stop the run's uploader after it pushed every queued line; True when it finished within `timeout`."""
    thread = _Uploader.thread
    if thread is None or not thread.is_alive():
        return True
    log_queue.put(None)  # the uploader's sentinel: push what is queued, then return
    thread.join(timeout)
    return not thread.is_alive()


def tune_serverapp_log_flush() -> None:
    """Replace the fixed sleep of the ServerApp's final log flush (in this process; the warm executor's child)."""
    module = importlib.import_module(RUN_SERVERAPP)
    if getattr(module.start_log_uploader, "fedcare_tuned", False):
        return
    module.start_log_uploader = _remember(module.start_log_uploader)
    module.flush_logs = flush_by_stopping
