"""The run's noise multiplier: Opacus' answer, searched once and then read from the state directory."""

from __future__ import annotations

import json
from pathlib import Path

from opacus.accountants.utils import get_noise_multiplier

from client.noise_plan import PLANS_FILE, run_noise_multiplier

SETTINGS = {"target_epsilon": 3.0, "delta": 1e-5, "sample_rate": 0.05, "steps": 200, "accountant": "rdp"}


def test_the_first_call_is_opacus_answer_and_later_calls_read_it_back(tmp_path: Path) -> None:
    expected = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=0.05, steps=200, accountant="rdp"
    )
    assert run_noise_multiplier(state_dir=tmp_path, **SETTINGS) == expected

    # The second call reads the file (no second search): a value planted under the same key comes back.
    plans = json.loads((tmp_path / PLANS_FILE).read_text())
    (key,) = plans
    (tmp_path / PLANS_FILE).write_text(json.dumps({key: 1.2345}))
    assert run_noise_multiplier(state_dir=tmp_path, **SETTINGS) == 1.2345


def test_other_settings_search_again_and_a_damaged_file_only_costs_the_search(tmp_path: Path) -> None:
    first = run_noise_multiplier(state_dir=tmp_path, **SETTINGS)
    tighter = run_noise_multiplier(state_dir=tmp_path, **(SETTINGS | {"target_epsilon": 1.0}))
    assert tighter > first  # less epsilon, more noise
    assert len(json.loads((tmp_path / PLANS_FILE).read_text())) == 2

    (tmp_path / PLANS_FILE).write_text("{not json")
    assert run_noise_multiplier(state_dir=tmp_path, **SETTINGS) == first
