"""A dead hospital does not end a run: real processes, a SuperNode SIGKILLed after round 1, min-nodes left at
its default (a quorum: 2 of 3).

One federation (conftest's `he_federation`, test_he_federation's before this test) serves two runs. Plain:
hospital-3 is killed and restarted at once with the same kit and state; the run goes on with the other two
(results.json says who dropped and why) and hospital-3 takes part again at a later round. HE: hospital-2 is
killed; the survivors' encrypted sum still decrypts with the hospitals' secret context, which each of them holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from client.he_export import decrypt_model
from common.schema import load_schema
from tests.integration.conftest import APP_DIR, LAST_ON_SHARED, HeFederation, wait_finished

pytestmark = [pytest.mark.slow, getattr(pytest.mark, LAST_ON_SHARED)]  # it kills the shared federation's nodes
BOTH = ["hospital-1", "hospital-2", "hospital-3"]


def _after_round(results: Path, server_round: int, *, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(json.loads(results.read_text())["rounds"]) >= server_round:
                return
        except (OSError, ValueError):
            pass  # not written yet
        assert time.monotonic() < deadline, f"round {server_round} not recorded in {results} within {timeout:.0f} s"
        time.sleep(0.1)


def _rounds(results: Path) -> list[dict[str, Any]]:
    data = json.loads(results.read_text())
    assert data["status"] == "completed", data.get("error")
    assert all(r["status"] == "aggregated" for r in data["rounds"]), [r.get("reason") for r in data["rounds"]]
    return data["rounds"]


def test_a_killed_hospital_costs_no_round_rejoins_when_restarted_and_he_survives_a_dropout(
    tmp_path: Path, he_federation: HeFederation
) -> None:
    fed, split, keys, runs = he_federation.fed, he_federation.split, he_federation.keys, tmp_path / "runs"
    common = {"schema-path": str(split.schema_path), "results-dir": str(runs), "dp": False, "local-epochs": 1}
    nodes = dict(he_federation.nodes)

    plain_id = fed.submit(app_dir=APP_DIR, run_config={**common, "num-rounds": 10})
    _after_round(runs / str(plain_id) / "results.json", 1)
    fed.kill(nodes[3])
    killed = time.monotonic()
    he_federation.start(3, wait=False)  # the same kit (hence node id) and state folder
    assert wait_finished(fed, plain_id) == "finished:completed"
    plain_seconds = time.monotonic() - killed

    he_id = fed.submit(
        app_dir=APP_DIR,
        run_config={**common, "num-rounds": 3, "privacy-mode": "he", "he-public-context": str(keys.server_context)},
    )
    _after_round(runs / str(he_id) / "results.json", 1)
    fed.kill(nodes[2])
    killed = time.monotonic()
    assert wait_finished(fed, he_id) == "finished:completed"
    he_seconds = time.monotonic() - killed
    he_federation.close()  # stops every process the federation started, and checks that each is gone

    rounds = _rounds(runs / str(plain_id) / "results.json")
    assert rounds[0]["participants"] == BOTH and rounds[0]["dropped"] == {}
    dropped_at = next(r["round"] for r in rounds if "hospital-3" in r["dropped"])
    back_at = next(r["round"] for r in rounds if "hospital-3" in r["rejoined"])
    assert 2 <= dropped_at < back_at, [(r["participants"], r["dropped"], r["rejoined"]) for r in rounds]
    for entry in rounds[dropped_at - 1 : back_at - 1]:  # gone: the others go on, and each round says why
        assert entry["participants"] == ["hospital-1", "hospital-2"] and list(entry["dropped"]) == ["hospital-3"]
        assert "heartbeats" in entry["dropped"]["hospital-3"]["reason"], entry["dropped"]
    for entry in rounds[back_at - 1 :]:
        assert entry["participants"] == BOTH and entry["dropped"] == {}
    first = rounds[dropped_at - 1]["dropped"]["hospital-3"]
    print(f"\nplain: dropped at round {dropped_at}: {first}; rejoined at round {back_at}; {plain_seconds:.0f} s")

    he_rounds = _rounds(runs / str(he_id) / "results.json")
    assert he_rounds[0]["participants"] == BOTH
    gone = [r["round"] for r in he_rounds if "hospital-2" in r["dropped"]]
    assert gone and gone == list(range(gone[0], len(he_rounds) + 1)), [r["dropped"] for r in he_rounds]
    assert all(r["participants"] == ["hospital-1", "hospital-3"] for r in he_rounds[gone[0] - 1 :])
    he = json.loads((runs / str(he_id) / "results.json").read_text())
    _, header = decrypt_model(
        Path(he["final_model_path"]), context=keys.hospital_context, schema=load_schema(split.schema_path)
    )
    assert header.contributors == 2 and header.server_round == len(he_rounds)  # the survivors' sum, decrypted
    print(f"HE: hospital-2 dropped from round {gone[0]}; {he_seconds:.0f} s after the kill")
