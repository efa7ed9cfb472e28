"""HE mode on a real federation: SuperLink + 3 SuperNodes, CKKS updates the server cannot read.

The federation (conftest's `he_federation`) is test_dropouts' too: that test runs after this one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.he_export import decrypt_model
from client.training import evaluate
from common.data import load_hospital_table
from common.demo_data import DemoSplit
from common.models import build_model
from common.schema import load_schema
from tests.integration.conftest import APP_DIR, HeFederation, wait_finished

pytestmark = pytest.mark.slow


def _holdout_accuracy(split: DemoSplit, state_dict: dict[str, torch.Tensor]) -> float:
    schema = load_schema(split.schema_path)
    model = build_model(schema)
    model.load_state_dict(state_dict)
    return evaluate(model, load_hospital_table(split.holdout_path, schema), device=torch.device("cpu")).accuracy


def test_he_federation_matches_plain_and_the_server_never_holds_a_readable_model(
    tmp_path: Path, he_federation: HeFederation
) -> None:
    """DP off in both runs, same seed: then the only difference is CKKS, whose error is ~1e-8. The fixture
    checks, once the federation stopped, that every process it started is gone."""
    fed, split, keys = he_federation.fed, he_federation.split, he_federation.keys
    runs = tmp_path / "runs"
    common = {
        "num-rounds": 2,
        "schema-path": str(split.schema_path),
        "results-dir": str(runs),
        "min-nodes": 3,
        "dp": False,
    }
    plain_id = fed.submit(app_dir=APP_DIR, run_config=common)
    plain_status = wait_finished(fed, plain_id)
    he_id = fed.submit(
        app_dir=APP_DIR, run_config={**common, "privacy-mode": "he", "he-public-context": str(keys.server_context)}
    )
    he_status = wait_finished(fed, he_id)
    # The server must refuse to run HE with a context that can decrypt.
    leaked_id = fed.submit(
        app_dir=APP_DIR,
        run_config={**common, "privacy-mode": "he", "he-public-context": str(keys.hospital_context)},
    )
    leaked_status = wait_finished(fed, leaked_id, timeout=180)
    assert (plain_status, he_status) == ("finished:completed", "finished:completed")

    he = json.loads((runs / str(he_id) / "results.json").read_text())
    assert he["privacy_mode"] == "he" and he["status"] == "completed"
    facts = he["privacy"]["he"]
    assert (
        facts["scheme"] == "CKKS" and facts["poly_modulus_degree"] == 4096 and facts["coeff_mod_bit_sizes"] == [60, 40]
    )
    assert facts["key_id"] == keys.key_id
    for entry in he["rounds"]:
        assert entry["status"] == "aggregated" and entry["participants"] == ["hospital-1", "hospital-2", "hospital-3"]
        assert set(entry["bytes_sent"]) == {"hospital-1", "hospital-2", "hospital-3"}
        assert all(n > 4 * facts["model_values"] for n in entry["bytes_sent"].values())  # ciphertexts, not floats
        assert entry["model_path"].endswith(".he")
    # Nothing the server wrote is a readable model: only .he files, which need the hospitals' key.
    written = {p.suffix for p in (runs / str(he_id)).rglob("*") if p.is_file()}
    assert written == {".json", ".he"}, written
    assert he["final_model_path"].endswith("final_model.he")

    schema = load_schema(split.schema_path)
    decrypted, header = decrypt_model(Path(he["final_model_path"]), context=keys.hospital_context, schema=schema)
    assert header.contributors == 3 and header.server_round == 2
    plain = json.loads((runs / str(plain_id) / "results.json").read_text())
    # Metrics follow the mode: per-site in plain mode; in HE mode only the federation figures, decrypted by
    # the hospitals (the last ones through the query.metrics exchange), equal to plain mode's weighted means.
    assert (plain["metrics"], he["metrics"]) == ("per-site", "aggregate")
    for mine, theirs in zip([he["initial"], *he["rounds"]], [plain["initial"], *plain["rounds"]], strict=True):
        assert mine["per_institution"] == {} and len(theirs["per_institution"]) == 3
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-3)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=0.015)  # one borderline row may flip
        assert mine.get("train_loss") == pytest.approx(theirs.get("train_loss"), abs=1e-3)
    plain_weights = torch.load(plain["final_model_path"], weights_only=True)
    max_diff = max(float((decrypted[k] - plain_weights[k]).abs().max()) for k in plain_weights)
    assert max_diff < 1e-4, max_diff  # two rounds of training amplify CKKS' ~1e-8 error only slightly
    he_acc, plain_acc = _holdout_accuracy(split, decrypted), _holdout_accuracy(split, plain_weights)
    assert abs(he_acc - plain_acc) <= 0.01, (he_acc, plain_acc)
    assert he_acc > 0.85

    leaked = (
        json.loads((runs / str(leaked_id) / "results.json").read_text())
        if (runs / str(leaked_id) / "results.json").exists()
        else None
    )
    assert leaked_status == "finished:failed"
    assert leaked is None  # refused before any round, before writing anything
