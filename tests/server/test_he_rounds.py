"""HE rounds end to end in one process: the real ClientApp handlers answer the real HERounds.

The SuperLink is replaced by a loopback grid that hands each message to `client.app.train`, so
the ciphertexts, the aggregator and the hospitals' decryption are the production code. (The real
multi-process federation is `tests/integration/test_he_federation.py`.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Message

from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.he.keys import load_server_context, write_keys
from common.he.wire import HEADER_KEY, InvalidCiphertext, flatten, put_bundle, take_bundle
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from server.he_aggregate import HEAggregator
from server.he_rounds import HERounds
from server.rounds import RoundContext
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def _rounds(tmp_path: Path, split: DemoSplit, *, tamper=lambda node, reply: None) -> tuple[HERounds, LoopbackGrid]:
    keys = write_keys(tmp_path / "he")
    hospitals = {
        node: {
            "institution": f"hospital-{node}",
            "data-path": str(path),
            "he-secret-context": str(keys.hospital_context),
            "state-dir": str(tmp_path / f"state-{node}"),
        }
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    grid = LoopbackGrid(hospitals, tamper=tamper)
    settings = RunSettings.model_validate(
        {
            "schema-path": str(split.schema_path),
            "num-rounds": 2,
            "dp": False,
            "local-epochs": 1,
            "privacy-mode": "he",
            "he-public-context": str(keys.server_context),
        }
    )
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True)
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    initial = to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict()))
    return HERounds(ctx, load_server_context(keys.server_context), initial=initial), grid


def _damage(reply: Message, *, server_context: bytes, parses: bool) -> None:
    """Flip bytes in chunk 1 (and reseal the digest, as a sender could): either so that the server
    cannot parse the chunk, or a single byte that still parses, which a key-less server cannot notice."""
    bundle = take_bundle(reply.content)
    num_values = bundle.header.num_values
    for pos in range(len(bundle.chunks[1]) // 2, len(bundle.chunks[1])):
        chunk = bytearray(bundle.chunks[1])
        if parses:
            chunk[pos] ^= 0xFF
        else:
            chunk[pos : pos + 16] = bytes(b ^ 0xFF for b in chunk[pos : pos + 16])
        damaged = replace(bundle, chunks=(bundle.chunks[0], bytes(chunk), *bundle.chunks[2:])).sealed()
        probe = HEAggregator(
            server_context, expected_values=num_values, run_id=RUN, server_round=bundle.header.server_round
        )
        try:
            probe.add(damaged, institution="probe")
            accepted = True
        except InvalidCiphertext:
            accepted = False
        if accepted == parses:
            put_bundle(reply.content, damaged)
            return
    raise AssertionError("no such position")


def test_a_ciphertext_the_server_cannot_parse_costs_only_its_sender(tmp_path: Path, split: DemoSplit) -> None:
    server_context = tmp_path / "he" / "server" / "he-public.ctx"

    def tamper(node: int, reply: Message) -> None:
        if node == 2 and take_bundle(reply.content).header.server_round == 1:
            _damage(reply, server_context=server_context.read_bytes(), parses=False)

    rounds, _ = _rounds(tmp_path, split, tamper=tamper)
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    assert outcome.aggregated
    assert sorted(outcome.replies.participants) == ["hospital-1", "hospital-3"]
    (rejection,) = outcome.replies.rejections
    assert (rejection.institution, rejection.code) == ("hospital-2", "invalid-ciphertext")
    assert "chunk 1" in rejection.reason
    assert set(outcome.extra["bytes_sent"]) == {"hospital-1", "hospital-2", "hospital-3"}
    # results.json's bytes on the wire: each reply's whole content (ciphertexts and all), the model sent down
    for who, n in outcome.replies.bytes_up.items():
        assert n > outcome.extra["bytes_sent"][who]
    assert outcome.replies.bytes_down is not None and outcome.replies.bytes_down > outcome.extra["model_bytes_to_each"]
    assert rounds.global_sum is not None and rounds.global_sum.header.contributors == 2

    # The next round's hospitals decrypt the two-hospital sum and train on it; all three take part.
    second = rounds.train(nodes=[1, 2, 3], server_round=2)
    assert second.aggregated and second.replies.rejections == []
    assert sorted(second.replies.participants) == ["hospital-1", "hospital-2", "hospital-3"]


def test_a_ciphertext_altered_so_it_still_parses_is_refused_by_the_hospitals_and_the_server_goes_back(
    tmp_path: Path, split: DemoSplit
) -> None:
    damage = {"round": 2}
    server_context = tmp_path / "he" / "server" / "he-public.ctx"

    def tamper(node: int, reply: Message) -> None:
        if (
            node == 2
            and HEADER_KEY in reply.content
            and take_bundle(reply.content).header.server_round == damage["round"]
        ):
            _damage(reply, server_context=server_context.read_bytes(), parses=True)

    rounds, _ = _rounds(tmp_path, split, tamper=tamper)
    assert rounds.train(nodes=[1, 2, 3], server_round=1).aggregated
    good = rounds.global_sum
    second = rounds.train(nodes=[1, 2, 3], server_round=2)
    assert second.aggregated and len(second.replies.participants) == 3  # the server could not tell

    third = rounds.train(nodes=[1, 2, 3], server_round=3)
    assert not third.aggregated and third.replies.participants == []
    assert {r.code for r in third.replies.rejections} == {"bad-global-model"}
    assert all("check value" in r.reason or "beyond the" in r.reason for r in third.replies.rejections)
    assert "going back to round 1's model" in (third.reason or "")
    assert rounds.global_sum is good

    fourth = rounds.train(nodes=[1, 2, 3], server_round=4)
    assert fourth.aggregated and sorted(fourth.replies.participants) == ["hospital-1", "hospital-2", "hospital-3"]


def test_the_server_holds_only_ciphertexts_and_hospitals_refuse_a_stale_sum(tmp_path: Path, split: DemoSplit) -> None:
    rounds, grid = _rounds(tmp_path, split)
    rounds.train(nodes=[1, 2, 3], server_round=1)
    first_sum = rounds.global_sum
    assert first_sum is not None and first_sum.header.kind == "sum"
    assert not hasattr(rounds, "weights")  # no plaintext global model kept after round 1
    assert (tmp_path / "run" / "models" / "round-1.he").exists()
    assert len(first_sum.chunks) * 2048 >= flatten(rounds.initial).size

    # A sum claiming the current round (or a later one) cannot be the model of an earlier round.
    rounds.train(nodes=[1, 2, 3], server_round=2)
    rounds.global_sum = replace(first_sum, header=replace(first_sum.header, server_round=3)).sealed()
    replies = rounds.evaluate(nodes=[1, 2, 3], server_round=3)
    assert {r.code for r in replies.rejections} == {"bad-global-model"} and len(replies.rejections) == 3
    assert "round 3" in replies.rejections[0].reason


def test_a_hospital_holding_another_key_set_refuses_by_name_and_the_others_aggregate(
    tmp_path: Path, split: DemoSplit
) -> None:
    """After a rotation, a hospital still on the old key set must not encrypt under it: it refuses, naming
    both key ids, and the server's sum holds only updates under the run's key set."""
    rounds, grid = _rounds(tmp_path, split)
    stale = write_keys(tmp_path / "old-he")
    grid.hospitals[2] = {**grid.hospitals[2], "he-secret-context": str(stale.hospital_context)}
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    assert outcome.aggregated and sorted(outcome.replies.participants) == ["hospital-1", "hospital-3"]
    (rejection,) = outcome.replies.rejections
    assert (rejection.institution, rejection.code) == ("hospital-2", "he-key-mismatch")
    assert stale.key_id in rejection.reason and rounds.keys.key_id in rejection.reason
    assert rounds.global_sum is not None and rounds.global_sum.header.key_id == rounds.keys.key_id
