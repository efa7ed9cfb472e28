"""Starting and resuming a run from its checkpoint, against the real ClientApp handlers (loopback grid):
each mode's `state()` holds what its next round needs, and a resumed run goes on where the last one stopped."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.he.keys import load_server_context, write_keys
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from server.checkpoint import CheckpointError, plan_resume, read_checkpoint
from server.he_rounds import HERounds
from server.results import RunResults
from server.rounds import PlainRounds, RoundContext
from server.run_progress import RunDirBusy, RunProgress, lock_run_dir
from server.secagg_rounds import SecAggRounds
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _context(tmp_path: Path, split: DemoSplit, **config: object) -> tuple[RoundContext, OrderedDict[str, np.ndarray]]:
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(tmp_path / f"state-{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate(
        {"schema-path": str(split.schema_path), "num-rounds": 3, "dp": False, "local-epochs": 1, **config}
    )
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True, exist_ok=True)
    grid = LoopbackGrid(hospitals)
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    return ctx, to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict()))


def _results(ctx: RoundContext) -> RunResults:
    return RunResults(
        path=ctx.run_dir / "results.json",
        run_id=ctx.run_id,
        privacy_mode=ctx.settings.privacy_mode,
        model="mlp",
        parameter_count=1,
        num_rounds=ctx.settings.num_rounds,
    )


def test_a_resumed_plain_run_goes_on_from_the_checkpointed_model_and_results(tmp_path: Path, split: DemoSplit) -> None:
    ctx, initial = _context(tmp_path, split)
    rounds, results = PlainRounds(ctx, initial), _results(ctx)
    progress = RunProgress.start(
        run_dir=ctx.run_dir,
        run_id=RUN,
        flower_run_id=RUN,
        run_config={"num-rounds": 3, "schema-path": ctx.settings.schema_path},
        resuming=False,
        rounds=rounds,
        results=results,
        gate=None,
    )
    assert progress.next_round == 1 and read_checkpoint(ctx.run_dir).completed_round == 0  # type: ignore[union-attr]
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    results.record_round(server_round=1, replies=outcome.replies, model_path=outcome.model_path)  # type: ignore[arg-type]
    progress.accounted(1, scored_round=1, model_path=outcome.model_path)
    trained = rounds.weights  # then the coordinator crashes in round 2

    plan = plan_resume(ctx.run_dir)
    assert plan.from_round == 2 and plan.run_config["fedcare-run-id"] == str(RUN)
    fresh, restarted = PlainRounds(ctx, initial), _results(ctx)
    resumed = RunProgress.start(
        run_dir=ctx.run_dir,
        run_id=RUN,
        flower_run_id=991,
        run_config={},
        resuming=True,
        rounds=fresh,
        results=restarted,
        gate=None,
    )
    assert resumed.next_round == 2 and resumed.scored_round == 1 and resumed.model_path == outcome.model_path
    assert all(np.array_equal(fresh.weights[k], trained[k]) for k in trained)
    assert [r["round"] for r in resumed.results.rounds] == [1]
    (entry,) = resumed.results.resumed
    assert entry["from_round"] == 2 and entry["flower_run_id"] == "991" and entry["at"]
    assert resumed.results.status == "running"

    with pytest.raises(CheckpointError, match="is of run"):
        RunProgress.start(
            run_dir=ctx.run_dir,
            run_id=RUN + 1,
            flower_run_id=992,
            run_config={},
            resuming=True,
            rounds=fresh,
            results=restarted,
            gate=None,
        )


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path, split: DemoSplit) -> None:
    ctx, initial = _context(tmp_path, split)
    state = PlainRounds(ctx, initial).state()
    smaller = OrderedDict(list(initial.items())[:-1])
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        PlainRounds(ctx, smaller).restore(state)


def test_he_state_is_the_encrypted_sums_and_needs_the_runs_key_set(tmp_path: Path, split: DemoSplit) -> None:
    keys = write_keys(tmp_path / "he")
    ctx, initial = _context(tmp_path, split, **{"privacy-mode": "he", "he-public-context": str(keys.server_context)})
    for config in ctx.grid.hospitals.values():  # type: ignore[attr-defined]
        config["he-secret-context"] = str(keys.hospital_context)
    rounds = HERounds(ctx, load_server_context(keys.server_context), initial=initial)
    rounds.train(nodes=[1, 2, 3], server_round=1)
    state = rounds.state()
    assert rounds.global_sum is not None and state["global_sum"] == rounds.global_sum.to_bytes()
    assert state["previous_sum"] is None and isinstance(state["metrics_sum"], bytes)  # aggregate metrics, encrypted
    assert "weights" not in state  # no plaintext model: the server never had one after round 1

    again = HERounds(ctx, load_server_context(keys.server_context), initial=initial)
    again.restore(state)
    assert again.global_sum == rounds.global_sum and again.metrics_sum == rounds.metrics_sum
    outcome = again.train(nodes=[1, 2, 3], server_round=2)  # the hospitals decrypt the restored sum and go on
    assert outcome.aggregated and outcome.replies.rejections == []

    other = write_keys(tmp_path / "other-he")
    with pytest.raises(CheckpointError, match="under key set"):
        HERounds(ctx, load_server_context(other.server_context), initial=initial).restore(state)


def test_secagg_state_keeps_the_model_and_the_suspected_dead(tmp_path: Path, split: DemoSplit) -> None:
    ctx, initial = _context(tmp_path, split, **{"privacy-mode": "secagg"})
    rounds = SecAggRounds(ctx, initial)
    rounds.suspects = {2**63 + 5: "no reply to SecAgg+ stage 'share-keys' of round 1"}
    rounds.institutions = {2**63 + 5: "hospital-2", 7: "hospital-1"}
    again = SecAggRounds(ctx, OrderedDict((k, np.zeros_like(v)) for k, v in initial.items()))
    again.restore(rounds.state())
    assert again.suspects == rounds.suspects and again.institutions == rounds.institutions
    assert all(np.array_equal(again.weights[k], initial[k]) for k in initial)


def test_one_serverapp_at_a_time_works_in_a_run_directory(tmp_path: Path) -> None:
    held = lock_run_dir(tmp_path)
    with pytest.raises(RunDirBusy, match="another ServerApp still works"):
        lock_run_dir(tmp_path, timeout=0.2)
    held.close()  # as when the process dies
    lock_run_dir(tmp_path, timeout=0.2).close()
