"""The DP event: one shape from the hospital's accountant to the ledger, and epsilon replayed through Opacus."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord
from opacus.accountants import PRVAccountant

from common.dp_event import ACCOUNTANTS, LEDGER_FIELDS, RECORD_FIELDS, DPEvent, epsilon_of, ledger_record

DELTA = 1e-5


def _event(**overrides: object) -> DPEvent:
    fields = dict(noise_multiplier=1.1, sample_rate=0.1, steps=20, accountant="rdp", epsilon=1.25, delta=DELTA)
    return DPEvent(**(fields | {"run_id": 1795588208837835127, "server_round": 3} | overrides))


def test_an_event_survives_the_clientapps_record_as_it_was() -> None:
    """The hospital sends `as_record()` in a ConfigRecord; the ServerApp reads back the same event."""
    event = _event()
    assert DPEvent.from_record(ConfigRecord(event.as_record())) == event
    assert event.run_id == "1795588208837835127"  # run ids exceed a signed 64-bit metric: text on the wire
    assert tuple(event.as_record()) == RECORD_FIELDS


def test_the_ledger_record_is_the_event_plus_its_institution() -> None:
    record = _event().for_ledger(institution="St Mary")
    assert tuple(sorted(record)) == tuple(sorted(LEDGER_FIELDS))
    assert ledger_record(record | {"recorded_at": "extra keys are left out"}) == record


def test_events_need_the_ledger_fields() -> None:
    with pytest.raises(ValueError, match="lacks institution"):
        ledger_record(_event().as_record())
    assert (
        ledger_record(_event(run_id=12345678901234567890).for_ledger(institution="h") | {"recorded_at": "x"})["run_id"]
        == "12345678901234567890"
    )


def test_a_field_of_the_wrong_kind_is_named() -> None:
    with pytest.raises(ValueError, match="steps is 'many'"):
        _event(steps="many")
    with pytest.raises(ValueError, match="lacks steps, delta"):
        DPEvent.from_record({k: v for k, v in _event().as_record().items() if k not in ("steps", "delta")})


def test_prv_is_replayed_from_the_same_history() -> None:
    history = [(1.0, 0.05, 40)]
    prv = PRVAccountant()
    for _ in range(40):
        prv.step(noise_multiplier=1.0, sample_rate=0.05)
    assert epsilon_of(history, accountant="prv", delta=DELTA) == pytest.approx(prv.get_epsilon(delta=DELTA), rel=1e-6)
    # RDP is the looser bound, as the field notes measured.
    assert epsilon_of(history, accountant="rdp", delta=DELTA) > epsilon_of(history, accountant="prv", delta=DELTA)


def test_every_declared_accountant_is_one_opacus_knows() -> None:
    for name in ACCOUNTANTS:
        assert epsilon_of([(1.0, 0.05, 40)], accountant=name, delta=DELTA) > 0


def test_a_history_of_many_rounds_gives_opacus_replay_of_every_round() -> None:
    """epsilon_of summarizes rounds of one setting; the result is what Opacus gives replaying each round."""
    from opacus.accountants import create_accountant

    history = [(1.1, 0.1, 16)] * 12 + [(0.9, 0.05, 30)] * 3 + [(1.1, 0.1, 16)] * 5 + [(1.1, 0.1, 9)]
    for name in ACCOUNTANTS:
        replay = create_accountant(mechanism=name)
        replay.history = list(history)
        expected = replay.get_epsilon(delta=DELTA)
        assert epsilon_of(history, accountant=name, delta=DELTA) == pytest.approx(expected, rel=1e-9)
    assert epsilon_of(history, accountant="rdp", delta=DELTA) > epsilon_of(history[:-1], accountant="rdp", delta=DELTA)
