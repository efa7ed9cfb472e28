"""Server optimizers in the rounds of each mode, against the real ClientApp handlers (loopback grid).

Plain mode: the server's new model is the optimizer's step from the fedavg of the replies it accepted.
HE mode: the hospitals take the step after decrypting, with the state carried in the encrypted sum; a
hospital that missed a round takes part again, and the final model decrypts only with the run's optimizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from client.he_export import decrypt_model
from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.he.keys import load_server_context, write_keys
from common.he.wire import InvalidCiphertext
from common.models import build_model
from common.schema import load_schema
from common.server_optimizer import FedAdam, ServerOptimizer, server_optimizer_from_record, server_optimizer_record
from common.settings import RunSettings
from server.fedavg import fedavg
from server.he_rounds import HERounds
from server.rounds import PlainRounds, RoundContext
from tests.server.loopback import LoopbackGrid, hospital_node_configs

pytestmark = pytest.mark.usefixtures("serverapp_identity")
OPTIMIZER = {"server-optimizer": "fedadam", "server-learning-rate": 0.05, "server-momentum": 0.9}


def _context(tmp_path: Path, split: DemoSplit, **config: object) -> RoundContext:
    every = {"he-secret-context": str(config.pop("secret"))} if "secret" in config else {}
    hospitals = hospital_node_configs(split.hospital_paths, state_root=tmp_path, every=every)
    settings = RunSettings.model_validate(
        {"schema-path": str(split.schema_path), "dp": False, "local-epochs": 1, **OPTIMIZER, **config}
    )
    (tmp_path / "run" / "models").mkdir(parents=True)
    grid = LoopbackGrid(hospitals)
    return RoundContext(grid=grid, settings=settings, schema=load_schema(split.schema_path), run_dir=tmp_path / "run")  # type: ignore[arg-type]


def _initial(ctx: RoundContext):
    return to_numpy(ArrayRecord(build_model(ctx.schema, seed=ctx.settings.seed).state_dict()))


def test_plain_rounds_step_the_fedavg_of_the_accepted_updates(tmp_path: Path, split: DemoSplit) -> None:
    ctx = _context(tmp_path, split, **{"privacy-mode": "plain"})
    initial = _initial(ctx)
    rounds = PlainRounds(ctx, initial)
    expected_opt, expected = FedAdam(learning_rate=0.05, momentum=0.9), initial
    for server_round in (1, 2):
        outcome = rounds.train(nodes=[1, 2, 3], server_round=server_round)
        assert outcome.aggregated
        expected = expected_opt.step(current=expected, average=fedavg(outcome.replies.updates))
        for k in expected:
            np.testing.assert_array_equal(rounds.weights[k], expected[k])
    assert rounds.optimizer is not None and rounds.optimizer.state()["steps"] == 2


def test_he_hospitals_step_with_the_carried_state_and_a_hospital_that_missed_a_round_rejoins(
    tmp_path: Path, split: DemoSplit
) -> None:
    keys = write_keys(tmp_path / "he")
    ctx = _context(
        tmp_path,
        split,
        secret=keys.hospital_context,
        **{"privacy-mode": "he", "he-public-context": str(keys.server_context), "metrics": "per-site"},
    )
    rounds = HERounds(ctx, load_server_context(keys.server_context), initial=_initial(ctx))
    facts = rounds.privacy_facts()["he"]
    assert facts["values_per_update"] == 4 * facts["model_values"] + 1  # update, base, m, v, step count
    for server_round, nodes in ((1, [1, 2, 3]), (2, [1, 2]), (3, [1, 2, 3])):  # hospital-3 misses round 2
        outcome = rounds.train(nodes=nodes, server_round=server_round)
        assert outcome.aggregated and outcome.replies.rejections == []
        assert sorted(outcome.replies.participants) == [f"hospital-{n}" for n in nodes]
    final = rounds.save_final()
    record = server_optimizer_record(ctx.settings)
    state, header = decrypt_model(
        final, context=keys.hospital_context, schema=ctx.schema, optimizer=server_optimizer_from_record(record)
    )
    assert header.server_round == 3 and set(state) == set(_initial(ctx))
    with pytest.raises(InvalidCiphertext, match="server-optimizer 'fedadam'"):
        decrypt_model(final, context=keys.hospital_context, schema=ctx.schema, optimizer=ServerOptimizer())
