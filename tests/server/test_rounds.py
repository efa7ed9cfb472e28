"""What every privacy mode's rounds share (`server.rounds.BaseRounds`), run against the real ClientApp
handlers through a loopback grid: the model in each message, the saved model files, the final scoring."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from server.rounds import PlainRounds, RoundContext
from server.secagg_rounds import SecAggRounds
from tests.server.loopback import LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _context(
    tmp_path: Path, split: DemoSplit, *, mode: str, metrics: str = "auto"
) -> tuple[RoundContext, OrderedDict[str, np.ndarray]]:
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(tmp_path / f"state-{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate(
        {
            "schema-path": str(split.schema_path),
            "dp": False,
            "local-epochs": 1,
            "privacy-mode": mode,
            "metrics": metrics,
        }
    )
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True)
    grid = LoopbackGrid(hospitals)
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    return ctx, to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict()))


def _saved(path: Path) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in torch.load(path, weights_only=True).items()}


def test_plain_rounds_save_each_aggregated_model_and_the_final_one_as_weights(tmp_path: Path, split: DemoSplit) -> None:
    ctx, initial = _context(tmp_path, split, mode="plain")
    rounds = PlainRounds(ctx, initial)
    assert rounds.privacy_facts() == {"mode": "plain"}

    for server_round in (1, 2):
        outcome = rounds.train(nodes=[1, 2, 3], server_round=server_round)
        assert outcome.aggregated and outcome.model_path == ctx.run_dir / "models" / f"round-{server_round}.pt"
        assert sorted(outcome.replies.participants) == ["hospital-1", "hospital-2", "hospital-3"]
    assert not all(np.array_equal(rounds.weights[k], initial[k]) for k in initial)  # training moved the model

    final = rounds.evaluate(nodes=[1, 2, 3], server_round=3)
    assert sorted(s[0] for s in final.scores) == ["hospital-1", "hospital-2", "hospital-3"]
    assert final.rejections == []
    path = rounds.save_final()
    assert path == ctx.run_dir / "final_model.pt"
    saved = _saved(path)
    assert all(np.array_equal(saved[k], rounds.weights[k]) for k in rounds.weights)
    assert all(np.array_equal(_saved(ctx.run_dir / "models" / "round-2.pt")[k], saved[k]) for k in saved)


def test_secagg_final_scoring_leaves_out_hospitals_suspected_dead(tmp_path: Path, split: DemoSplit) -> None:
    ctx, initial = _context(tmp_path, split, mode="secagg", metrics="per-site")  # scores read per hospital
    rounds = SecAggRounds(ctx, initial, suspects={2: "no reply to SecAgg+ stage 'setup' of round 1"})
    assert rounds.privacy_facts()["mode"] == "secagg"

    final = rounds.evaluate(nodes=[1, 2, 3], server_round=2)
    assert ctx.grid.received == [(1, "evaluate"), (3, "evaluate")]
    assert sorted(s[0] for s in final.scores) == ["hospital-1", "hospital-3"]
    assert rounds.save_final() == ctx.run_dir / "final_model.pt"
    assert all(np.array_equal(_saved(ctx.run_dir / "final_model.pt")[k], initial[k]) for k in initial)
