"""round-deadline where the server sees only a sum (SecAgg+, HE): the ServerApp's own loop (`server.app.main`)
against the real ClientApp handlers (loopback grid), with real Opacus, Flower's real SecAgg+ mod and workflow,
and real TenSEAL ciphertexts; one hospital slowed on purpose (node config `test-slowdown`).

The slow hospital's own guard stops it at the deadline in round 1, and round 2 schedules it fewer steps; with
`deadline-aggregation = "fednova"` the model round 2 produced is FedNova of the updates the hospitals kept on
their own disks (client/kept_update.py), not FedAvg of them. A reply without its steps, or claiming more than
its DP event, is refused as in plain mode. With the default ("fedavg") the sum is FedAvg's, and says so.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from client.accountant_state import HospitalAccountant
from client.he_export import decrypt_model
from client.kept_update import kept_update
from client.task_data import load_task_data
from common.data import split_train_validation
from common.demo_data import DemoSplit
from common.schema import load_schema
from common.site_work import WORK_RECORD, SiteWork
from server.app import main
from server.fedavg import ClientUpdate, fedavg
from server.fednova import fednova
from server.local_work import steps_within
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")
SLOW = 3
# hospital-3's steps are SLOWDOWN times slower. Not more: the slowdown sleeps after each step in proportion to
# that step, so one step slowed by load (0.2 s here at load 4) would overrun the deadline by SLOWDOWN times it.
SLOWDOWN = 8.0
# Seconds. Every hospital's LOCAL_EPOCHS (about 700 DP steps at batch 8) take longer than this under load, so each
# stops at the deadline, after steps in proportion to its speed; a round's fixed costs (loading, Opacus' set-up,
# scoring) take about a second on a loaded 2-core machine, and a shorter deadline would leave every hospital a
# step or two, equal whatever its speed.
DEADLINE = 2.5
LOCAL_EPOCHS, BATCH = 40, 8


def _run(
    tmp_path: Path,
    split: DemoSplit,
    *,
    mode: str,
    he_keys: Any = None,
    num_rounds: int = 2,
    local_epochs: int = LOCAL_EPOCHS,
    slowdown: float = SLOWDOWN,
    tamper: Any = None,
    aggregation: str = "fednova",
) -> dict[str, Any]:
    hospitals = {
        node: {
            "institution": f"hospital-{node}",
            "data-path": str(path),
            "state-dir": str(tmp_path / f"state-{node}"),
            **({"test-slowdown": slowdown} if node == SLOW and slowdown > 1 else {}),
            **({"he-secret-context": str(he_keys.hospital_context)} if he_keys else {}),
        }
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    run_config = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "num-rounds": num_rounds,
        "local-epochs": local_epochs,
        "batch-size": BATCH,
        "min-nodes": 3,
        "poll-interval": 0.01,
        "round-deadline": DEADLINE,
        "deadline-aggregation": aggregation,
        "privacy-mode": mode,
        **({"he-public-context": str(he_keys.server_context)} if he_keys else {}),
    }
    context = Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    grid = LoopbackGrid(hospitals, tamper=tamper or (lambda node, reply: None))
    try:
        main(grid, context)  # type: ignore[arg-type]
    except RuntimeError:
        pass  # no round aggregated: results.json says why
    return json.loads((tmp_path / "runs" / str(RUN) / "results.json").read_text())


def _check_the_slow_site(results: dict[str, Any], tmp_path: Path) -> None:
    """The deadline binds the slow hospital, the server schedules every hospital from its own report, and the
    steps taken are the steps charged. (Which site takes more steps is left to bench/deadline.py: on a loaded
    2-core machine one step can take 0.002 s or 0.5 s from one hospital's turn to the next.)"""
    assert results["status"] == "completed", results.get("error")
    rounds, slow = results["rounds"], f"hospital-{SLOW}"
    assert all(site["scheduled_steps"] is None for site in rounds[0]["sites"].values())  # not measured yet
    for name, site in rounds[1]["sites"].items():  # its own steps, from its own round-1 report
        assert site["scheduled_steps"] == steps_within(
            SiteWork.from_record(rounds[0]["sites"][name]), deadline=DEADLINE
        )
        assert site["local_steps"] <= site["scheduled_steps"]
    for entry in rounds:
        assert entry["status"] == "aggregated" and entry["round_deadline"] == DEADLINE
        sites = entry["sites"]
        assert sites[slow]["local_steps"] < sites[slow]["full_steps"], sites[slow]  # stopped at the deadline
        for name, site in sites.items():  # the DP events (and so the ledger) record the steps each site took
            assert entry["dp_events"][name]["steps"] == site["local_steps"]
        steps = [site["local_steps"] for site in sites.values()]
        assert min(steps) <= entry["effective_steps"] <= max(steps)
    # The slow hospital's own accountant was charged exactly the steps it took, round by round.
    accountant = HospitalAccountant.for_institution(tmp_path / f"state-{SLOW}", slow)
    assert [steps for _, _, steps in accountant.history] == [e["sites"][slow]["local_steps"] for e in rounds]
    assert rounds[-1]["epsilon"][slow] < 3.0  # the target: fewer steps spent less


def _kept_round(tmp_path: Path, split: DemoSplit, results: dict[str, Any]) -> list[ClientUpdate]:
    """The last round's updates, as each hospital kept them on its own disk, with its sample count and steps."""
    schema, entry = load_schema(split.schema_path), results["rounds"][-1]
    updates = []
    for node, path in enumerate(split.hospital_paths, start=1):
        name = f"hospital-{node}"
        kept = kept_update(tmp_path / f"state-{node}", run_id=RUN, server_round=entry["round"])
        assert kept is not None
        train, _ = split_train_validation(load_task_data(path, schema), validation_fraction=0.2, seed=42)
        updates.append(ClientUpdate(name, node, kept.weights, len(train), entry["sites"][name]["local_steps"]))
    return updates


def _farthest(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)


def _pt(path: Path) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.numpy()) for k, v in torch.load(path).items())


def test_secagg_a_slow_hospital_stops_at_the_deadline_and_the_unmasked_sum_gives_fednova(
    tmp_path: Path, split: DemoSplit
) -> None:
    results = _run(tmp_path, split, mode="secagg")
    _check_the_slow_site(results, tmp_path)
    run_dir = tmp_path / "runs" / str(RUN)
    base, model = _pt(run_dir / "models" / "round-1.pt"), _pt(run_dir / "models" / "round-2.pt")
    updates = _kept_round(tmp_path, split, results)
    bound = results["rounds"][-1]["secagg"]["quantization_error_bound"]  # SecAgg+'s integers, times τ_eff
    assert _farthest(model, fednova(updates, reference=base)) <= bound + 1e-6
    if len({u.local_steps for u in updates}) > 1:  # unequal steps (as good as certain): not what FedAvg makes
        assert _farthest(model, fedavg(updates)) > 2 * bound


def test_he_a_slow_hospital_stops_at_the_deadline_and_the_decrypted_sum_gives_fednova(
    tmp_path: Path, split: DemoSplit, he_keys: Any
) -> None:
    results = _run(tmp_path, split, mode="he", he_keys=he_keys)
    _check_the_slow_site(results, tmp_path)
    run_dir, schema = tmp_path / "runs" / str(RUN), load_schema(split.schema_path)

    def decrypted(path: Path) -> OrderedDict[str, np.ndarray]:  # as a hospital does: the server cannot
        state, header = decrypt_model(path, context=he_keys.hospital_context, schema=schema)
        assert header.effective_steps == pytest.approx(
            results["rounds"][header.server_round - 1]["effective_steps"], abs=1e-4
        )
        return OrderedDict((k, v.numpy()) for k, v in state.items())

    base, model = decrypted(run_dir / "models" / "round-1.he"), decrypted(run_dir / "models" / "round-2.he")
    updates = _kept_round(tmp_path, split, results)
    assert _farthest(model, fednova(updates, reference=base)) < 1e-5  # CKKS noise, times τ_eff
    if len({u.local_steps for u in updates}) > 1:  # unequal steps (as good as certain): not what FedAvg makes
        assert _farthest(model, fedavg(updates)) > 1e-3


def test_he_with_the_default_deadline_aggregation_the_sum_is_fedavg_and_its_header_carries_no_steps(
    tmp_path: Path, split: DemoSplit, he_keys: Any
) -> None:
    """The hospitals know the run's choice: with "fedavg" they encrypt their trained models, not per-step ones,
    without the base beside them, and the server's header says it applied no τ_eff. (One short round, its steps
    equal: a per-step model would differ from the trained one all the same, and the base would not fit the sum.)"""
    results = _run(
        tmp_path, split, mode="he", he_keys=he_keys, num_rounds=1, local_epochs=1, slowdown=1.0, aggregation="fedavg"
    )
    assert results["status"] == "completed", results.get("error")
    entry = results["rounds"][0]
    assert entry["deadline_aggregation"] == "fedavg" and "effective_steps" not in entry
    assert results["privacy"]["he"]["values_per_update"] == results["privacy"]["he"]["model_values"]
    state, header = decrypt_model(
        tmp_path / "runs" / str(RUN) / "models" / "round-1.he",
        context=he_keys.hospital_context,
        schema=load_schema(split.schema_path),
    )
    assert header.effective_steps is None
    model = OrderedDict((k, v.numpy()) for k, v in state.items())
    updates = _kept_round(tmp_path, split, results)
    assert _farthest(model, fedavg(updates)) < 1e-5  # CKKS noise


def _drop_or_inflate_steps(node: int, reply: Message) -> None:
    """hospital-1 sends no work report; hospital-2 claims one step more than its DP event records."""
    if WORK_RECORD not in reply.content:
        return
    if node == 1:
        del reply.content[WORK_RECORD]
    elif node == 2:
        reply.content[WORK_RECORD]["local_steps"] = int(reply.content["dp-event"]["steps"]) + 1


def test_he_refuses_an_update_without_its_steps_or_claiming_more_than_its_dp_event(
    tmp_path: Path, split: DemoSplit, he_keys: Any
) -> None:
    results = _run(
        tmp_path,
        split,
        mode="he",
        he_keys=he_keys,
        num_rounds=1,
        local_epochs=1,
        slowdown=1.0,
        tamper=_drop_or_inflate_steps,
    )
    entry = results["rounds"][0]
    assert entry["status"] == "aggregated" and entry["participants"] == ["hospital-3"]  # the others left no trace
    codes = {r["institution"]: (r["code"], r["reason"]) for r in entry["rejected"]}
    assert codes["hospital-1"][0] == "no-work-report" and "round-deadline needs it" in codes["hospital-1"][1]
    assert codes["hospital-2"][0] == "invalid-update" and "DP event records" in codes["hospital-2"][1]
    assert entry["effective_steps"] == entry["sites"]["hospital-3"]["local_steps"]


def test_secagg_fails_the_round_when_a_masked_update_lacks_its_steps_or_claims_more_than_its_dp_event(
    tmp_path: Path, split: DemoSplit
) -> None:
    results = _run(
        tmp_path, split, mode="secagg", num_rounds=1, local_epochs=1, slowdown=1.0, tamper=_drop_or_inflate_steps
    )
    entry = results["rounds"][0]
    # Their masked updates are inside the sum and cannot be taken out: the round fails, it never mis-weighs.
    assert results["status"] == "failed" and entry["status"] == "failed"
    assert "cannot take them out" in entry["reason"]
    assert "hospital-1: no work report" in entry["reason"] and "hospital-2: reports" in entry["reason"]
