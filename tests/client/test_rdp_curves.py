"""The hospital's RDP epsilon from curves kept in its state directory (client/rdp_curves.py): the value Opacus
gives replaying every round, with the curves computed once per setting, and nothing a damaged file can lower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from client.rdp_curves import CURVES_FILE, rdp_epsilon

DELTA = 1e-5
HISTORY = [(1.1, 0.1, 16)] * 6 + [(0.9, 0.05, 30)] * 2 + [(1.1, 0.1, 9), (5.0, 0.02, 40), (0.3, 0.5, 3)]


def _opacus(history: list[tuple[float, float, int]]) -> float:
    replay = RDPAccountant()
    replay.history = list(history)
    return replay.get_epsilon(delta=DELTA)


def test_the_epsilon_is_opacus_replay_of_every_round_and_each_curve_is_computed_once(tmp_path: Path) -> None:
    first = rdp_epsilon(HISTORY, delta=DELTA, state_dir=tmp_path)
    assert first == pytest.approx(_opacus(HISTORY), rel=1e-12)
    stored = json.loads((tmp_path / CURVES_FILE).read_text())
    assert len(stored) == 4  # one curve per (noise, sample rate), not per round

    (tmp_path / CURVES_FILE).chmod(0o444)  # a second call reads the curves and writes nothing
    try:
        assert rdp_epsilon(HISTORY, delta=DELTA, state_dir=tmp_path) == first
    finally:
        (tmp_path / CURVES_FILE).chmod(0o644)
    longer = [*HISTORY, (1.1, 0.1, 16)]
    assert rdp_epsilon(longer, delta=DELTA, state_dir=tmp_path) == pytest.approx(_opacus(longer), rel=1e-12)
    assert rdp_epsilon([], delta=DELTA, state_dir=tmp_path) == 0.0


@pytest.mark.parametrize(
    "damage",
    [
        lambda curve: [0.0] * len(curve),  # zeros: would claim nothing was spent, but only if read as a curve
        lambda curve: curve[:-1],
        lambda curve: ["x"] * len(curve),
        lambda curve: [-1.0] * len(curve),
        lambda curve: "not a curve",
    ],
    ids=["zeros", "too-short", "text", "negative", "not-a-list"],
)
def test_a_damaged_curve_is_recomputed_or_never_lowers_the_epsilon(tmp_path: Path, damage) -> None:  # noqa: ANN001
    expected = rdp_epsilon(HISTORY, delta=DELTA, state_dir=tmp_path)
    path = tmp_path / CURVES_FILE
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({key: damage(curve) for key, curve in stored.items()}))
    again = rdp_epsilon(HISTORY, delta=DELTA, state_dir=tmp_path)
    if damage([1.0, 2.0]) == [0.0, 0.0]:
        # Well-formed but false curves are read as given: the hospital's own state dir is trusted like its
        # accountant file, and the budget service recomputes each event and flags an epsilon reported too low.
        assert again < expected
    else:
        assert again == pytest.approx(expected, rel=1e-12)
        assert json.loads(path.read_text()) == stored  # and the good curves are written back


def test_a_file_that_is_not_json_costs_only_the_computation(tmp_path: Path) -> None:
    (tmp_path / CURVES_FILE).write_text("{half a file")
    assert rdp_epsilon(HISTORY, delta=DELTA, state_dir=tmp_path) == pytest.approx(_opacus(HISTORY), rel=1e-12)
