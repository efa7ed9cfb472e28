"""The work report and the schedule travel as Flower records and come back the same, or are refused by name."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict

from common.site_work import SCHEDULE_RECORD, Schedule, SiteWork, WorkReportError, put_schedule, read_schedule

WORK = SiteWork(
    local_steps=6,
    full_steps=18,
    train_seconds=1.5,
    step_seconds=0.25,
    round_seconds=2.0,
    device="cpu (2 cores)",
    memory_bytes=8 << 30,
    examples_per_second=64.0,
)


def test_a_work_report_round_trips_through_a_config_record() -> None:
    assert SiteWork.from_record(ConfigRecord(WORK.as_record())) == WORK
    assert WORK.overhead_seconds == 0.5


@pytest.mark.parametrize("change", [{"full_steps": 0}, {"train_seconds": -1.0}, {"local_steps": "many"}])
def test_a_bad_work_report_is_refused_by_name(change: dict) -> None:
    with pytest.raises(WorkReportError, match="work report"):
        SiteWork.from_record({**WORK.as_record(), **change})
    with pytest.raises(WorkReportError, match="incomplete"):
        SiteWork.from_record({k: v for k, v in WORK.as_record().items() if k != "device"})


def test_a_schedule_is_read_back_and_none_means_train_in_full() -> None:
    content = RecordDict()
    assert read_schedule(content) is None
    put_schedule(content, Schedule(deadline=30.0))  # the first round: the deadline only, local-epochs in full
    assert read_schedule(content) == Schedule(deadline=30.0, local_steps=None)
    put_schedule(content, Schedule(deadline=30.0, local_steps=7))
    assert read_schedule(content) == Schedule(deadline=30.0, local_steps=7)
    content[SCHEDULE_RECORD] = ConfigRecord({"deadline": 30.0, "local-steps": 0})
    with pytest.raises(WorkReportError, match="out of range"):
        read_schedule(content)
    with pytest.raises(WorkReportError, match="at least 1"):
        put_schedule(content, Schedule(deadline=30.0, local_steps=0))
