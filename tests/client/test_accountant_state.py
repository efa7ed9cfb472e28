from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from client.accountant_state import AccountantStateError, HospitalAccountant
from common.dp_event import DPEvent

DELTA = 1e-5


def _event(sigma: float, q: float, steps: int, eps: float, rnd: int) -> DPEvent:
    return DPEvent(
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        epsilon=eps,
        delta=DELTA,
        run_id=7,
        server_round=rnd,
    )


def test_epsilon_after_rounds_equals_a_fresh_opacus_accountant_fed_the_same_steps(tmp_path: Path) -> None:
    rounds = [(1.1, 0.08, 24), (1.1, 0.08, 24), (0.9, 0.1, 20)]
    ledger = HospitalAccountant.for_institution(tmp_path, "st-mary")
    for i, (sigma, q, steps) in enumerate(rounds, start=1):
        projected = ledger.projected_epsilon(
            noise_multiplier=sigma, sample_rate=q, steps=steps, accountant="rdp", delta=DELTA
        )
        ledger.commit(_event(sigma, q, steps, projected, i))

    reference = RDPAccountant()
    for sigma, q, steps in rounds:
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=q)
    reloaded = HospitalAccountant.for_institution(tmp_path, "st-mary")
    assert reloaded.epsilon(accountant="rdp", delta=DELTA) == pytest.approx(
        reference.get_epsilon(delta=DELTA), rel=1e-9
    )
    assert reloaded.events[-1]["epsilon"] == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    assert [e["server_round"] for e in reloaded.events] == [1, 2, 3]


def test_the_state_file_is_an_opacus_state_dict_and_written_atomically(tmp_path: Path) -> None:
    ledger = HospitalAccountant.for_institution(tmp_path, "st-mary")
    ledger.commit(_event(1.0, 0.1, 10, 1.0, 1))
    raw = json.loads((tmp_path / "privacy-accountant.json").read_text())
    assert raw["state"] == {"history": [[1.0, 0.1, 10]], "mechanism": "rdp"}
    restored = RDPAccountant()
    restored.load_state_dict({"history": [tuple(h) for h in raw["state"]["history"]], "mechanism": "rdp"})
    assert restored.get_epsilon(delta=DELTA) == pytest.approx(ledger.epsilon(accountant="rdp", delta=DELTA))
    # No temp file left behind; the RDP curves the epsilon was computed from are kept beside it (rdp_curves.py).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["privacy-accountant.json", "rdp-curves.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable"),
        ('{"format": "something-else"}', "not a fedcare accountant file"),
        (
            '{"format": "fedcare-accountant/1", "institution": "other-hospital", "state": {"history": []}}',
            "belongs to 'other-hospital'",
        ),
        (
            '{"format": "fedcare-accountant/1", "institution": "st-mary", "state": {"history": [[1.0, 2.0, 3]]}}',
            "out of range",
        ),
        (
            '{"format": "fedcare-accountant/1", "institution": "st-mary", "state": {"history": [["x"]]}}',
            "history entry 0",
        ),
        ('{"format": "fedcare-accountant/1", "institution": "st-mary"}', "missing 'state'"),
    ],
)
def test_a_corrupt_or_foreign_state_file_is_refused_with_a_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "privacy-accountant.json").write_text(content)
    with pytest.raises(AccountantStateError, match=message) as info:
        HospitalAccountant.for_institution(tmp_path, "st-mary")
    assert "privacy-accountant.json" in str(info.value)


def test_projection_does_not_spend(tmp_path: Path) -> None:
    ledger = HospitalAccountant.for_institution(tmp_path, "st-mary")
    before = ledger.epsilon(accountant="rdp", delta=DELTA)
    projected = ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=50, accountant="rdp", delta=DELTA)
    assert before == 0.0 and projected > 0
    assert ledger.history == []
    assert not (tmp_path / "privacy-accountant.json").exists()


def test_a_round_stopped_at_its_deadline_is_amended_to_the_steps_it_took(tmp_path: Path) -> None:
    """Committed with the planned 24 steps before training; the loop stopped after 9: the file (reloaded) holds
    9 and the epsilon of 9, equal to a fresh Opacus accountant fed 9 steps; only the round's own event amends."""
    ledger = HospitalAccountant.for_institution(tmp_path, "st-mary")
    planned = _event(
        1.1,
        0.08,
        24,
        ledger.projected_epsilon(noise_multiplier=1.1, sample_rate=0.08, steps=24, accountant="rdp", delta=DELTA),
        1,
    )
    ledger.commit(planned)
    with pytest.raises(AccountantStateError, match="cannot amend 24 committed steps to 25"):
        ledger.amend_to_steps_taken(planned, steps=25)
    amended = ledger.amend_to_steps_taken(planned, steps=9)

    reference = RDPAccountant()
    for _ in range(9):
        reference.step(noise_multiplier=1.1, sample_rate=0.08)
    reloaded = HospitalAccountant.for_institution(tmp_path, "st-mary")
    assert reloaded.history == [(1.1, 0.08, 9)]
    assert amended.steps == 9 and reloaded.events[-1]["steps"] == 9
    assert amended.epsilon == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    assert amended.epsilon < planned.epsilon
    with pytest.raises(AccountantStateError, match="not run 7 round 2"):
        reloaded.amend_to_steps_taken(_event(1.1, 0.08, 9, 1.0, 2), steps=3)
