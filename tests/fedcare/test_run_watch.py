"""Following a run cheaply (fedcare/run_watch.py): Flower is asked when the ServerApp executor's log shows a
run ending, and otherwise only after the fallback (without a log, also at the first check). The integration tests' waits
(`LocalFederation.wait_finished`) run it against real `flwr ls` calls; here `ask` counts its calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedcare.run_watch import RunWatch
from fedcare.warm_executor import TASK_ENDED_MARKS


class Flower:
    def __init__(self) -> None:
        self.asked, self.status = 0, "running"

    def __call__(self) -> dict[str, Any]:
        self.asked += 1
        return {"status": self.status}


def test_flower_is_asked_only_when_the_executor_logs_a_run_end(tmp_path: Path) -> None:
    log, flower = tmp_path / "serverapp-executor.log", Flower()
    log.write_text("fedcare.executor INFO: task served in 3.10 s (exited with code 0)\n")  # an earlier run's
    watch = RunWatch(ask=flower, task_log=log, fallback=3600)

    for _ in range(5):
        assert watch.check() == {}
    assert flower.asked == 0  # nothing new in the log: a run just submitted is running
    flower.status = "running"
    with log.open("a") as out:
        out.write(f"fedcare.executor INFO: {TASK_ENDED_MARKS[0]} 0.9 s (exited with code 0)\n")  # a run ends
    assert watch.check() == {"status": "running"} and flower.asked == 1  # (another run's end: ours runs on)
    watch.check()
    assert flower.asked == 1

    with log.open("a") as out:
        out.write("flwr INFO: round 5: aggregated 3 update(s)\n")
        out.write(f"fedcare.executor INFO: {TASK_ENDED_MARKS[0]} 2.0")  # a line still being written
    watch.check()
    assert flower.asked == 1

    flower.status = "finished:completed"
    with log.open("a") as out:
        out.write("1 s (exited with code 0)\n")
    assert watch.check()["status"] == "finished:completed" and flower.asked == 2
    assert watch.status == "finished:completed"


def test_a_run_that_ended_before_the_watch_began_is_seen_at_the_first_check(tmp_path: Path) -> None:
    log, flower = tmp_path / "serverapp-executor.log", Flower()
    log.write_text("flwr INFO: an earlier run's lines\n")
    submitted_at = log.stat().st_size
    with log.open("a") as out:
        out.write(f"fedcare executor: the ServerApp failed {TASK_ENDED_MARKS[1]}\n")
    flower.status = "finished:failed"
    watch = RunWatch(ask=flower, task_log=log, fallback=3600, since=submitted_at)
    assert watch.check()["status"] == "finished:failed" and flower.asked == 1


def test_a_failed_serverapp_line_also_makes_it_ask(tmp_path: Path) -> None:
    log, flower = tmp_path / "serverapp-executor.log", Flower()
    log.write_text("")
    watch = RunWatch(ask=flower, task_log=log, fallback=3600)
    watch.check()
    log.write_text(f"fedcare executor: the ServerApp was killed by SIGKILL {TASK_ENDED_MARKS[1]}\n")
    watch.check()
    assert flower.asked == 1


def test_without_a_log_or_news_it_asks_after_the_fallback(tmp_path: Path) -> None:
    flower = Flower()
    watch = RunWatch(ask=flower, task_log=None, fallback=0.2)
    watch.check()
    watch.check()
    assert flower.asked == 1
    time.sleep(0.25)
    watch.check()
    assert flower.asked == 2

    quiet = RunWatch(ask=flower, task_log=tmp_path / "not-yet-written.log", fallback=0.2)
    quiet.check()
    assert flower.asked == 2
    time.sleep(0.25)
    quiet.check()
    assert flower.asked == 3
