"""HE mode with a server optimizer: the hospitals' step after decryption equals the plaintext step.

Real TenSEAL ciphertexts, summed by the real server aggregator (which holds no secret key): three
hospitals run two rounds of FedAdam or FedAvgM on a tiny model, and the model they decrypt and step
matches the plain-mode server's to CKKS precision, including for a hospital that missed a round.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import tenseal as ts

from common.he.carried import carry_template, next_global, pack
from common.he.hospital import decrypt_sum, encrypt_update
from common.he.wire import flatten, layout_id
from common.server_optimizer import FedAdam, FedAvgM, ServerOptimizer
from server.fedavg import ClientUpdate, fedavg
from server.he_aggregate import HEAggregator

COUNTS = (30, 50, 20)


def _tiny(seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(w=rng.normal(size=(4, 3)).astype(np.float32), b=rng.normal(size=3).astype(np.float32))


def _trained(base: OrderedDict[str, np.ndarray], *, seed: int) -> OrderedDict[str, np.ndarray]:
    """A hospital's local training, stood in for by a seeded move away from the global model."""
    rng = np.random.default_rng(seed)
    return OrderedDict((k, (v + 0.05 * rng.normal(size=v.shape)).astype(v.dtype)) for k, v in base.items())


def _make(name: str) -> ServerOptimizer:
    return {
        "fedavgm": lambda: FedAvgM(learning_rate=1.0, momentum=0.9),
        "fedadam": lambda: FedAdam(learning_rate=0.05),
    }[name]()


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_hospitals_step_after_decrypting_equals_the_plaintext_step(
    name: str, keys: tuple[bytes, bytes], ctx: ts.Context
) -> None:
    initial = _tiny(0)
    plain, x_plain = _make(name), initial
    hospitals = [_make(name) for _ in COUNTS]  # each hospital's own copy, as each ClientApp builds it
    template = carry_template(initial, hospitals[0])
    sum_of_round = None
    bases = [initial] * len(COUNTS)  # round 1: every hospital starts from the plaintext initial model
    for server_round in (1, 2, 3):
        if sum_of_round is not None:
            # Hospital 3 misses round 2's message: in round 3 it decrypts the sum with a fresh optimizer.
            if server_round == 3:
                hospitals[2] = _make(name)
            averaged = [decrypt_sum(sum_of_round, context=ctx, template=template) for _ in COUNTS]
            bases = [next_global(a, model=initial, optimizer=h) for a, h in zip(averaged, hospitals, strict=True)]
            for base in bases[1:]:  # every hospital takes bit-identical steps from the same ciphertext
                for k in base:
                    np.testing.assert_array_equal(base[k], bases[0][k])
            for k in x_plain:  # and lands where the plain-mode server does, to CKKS precision
                np.testing.assert_allclose(bases[0][k], x_plain[k], atol=1e-5)
        trained = [_trained(bases[i], seed=10 * server_round + i) for i in range(len(COUNTS))]
        aggregator = HEAggregator(
            keys[1], expected_values=int(flatten(template).size), run_id=1, server_round=server_round,
            layout=layout_id(template),
        )  # fmt: skip
        for i, (n, w) in enumerate(zip(COUNTS, trained, strict=True)):
            carried = pack(trained=w, base=bases[i], optimizer=hospitals[i])
            update = encrypt_update(carried, num_examples=n, context=ctx, run_id=1, server_round=server_round)
            aggregator.add(update, institution=f"hospital-{i + 1}")
        sum_of_round, _ = aggregator.result()
        updates = [ClientUpdate(f"h{i}", i, w, n) for i, (n, w) in enumerate(zip(COUNTS, trained, strict=True))]
        x_plain = plain.step(current=x_plain, average=fedavg(updates))
    assert plain.steps == 3 and hospitals[0].steps == 2  # the hospitals step round 3's sum with the next message


def test_fedavg_carries_nothing_and_keeps_the_models_layout() -> None:
    model = _tiny(1)
    assert layout_id(carry_template(model, ServerOptimizer())) == layout_id(model)
    assert flatten(carry_template(model, FedAdam())).size == 4 * flatten(model).size + 1


@pytest.mark.parametrize("name", ["fedavg", "fedavgm"])
def test_fednova_through_the_encrypted_sum_equals_the_plaintext_fednova_step(
    name: str, keys: tuple[bytes, bytes], ctx: ts.Context
) -> None:
    """round-deadline in HE mode: each hospital encrypts its per-step model beside the base, the server adds and
    writes τ_eff (from the clear counts and steps) into the sum's header, and a hospital that decrypts lands where
    the plain-mode server's FedNova (and its server optimizer) does."""
    from common.fednova_sum import effective_steps
    from server.fednova import fednova

    make = ServerOptimizer if name == "fedavg" else (lambda: _make(name))
    initial, steps = _tiny(3), (2, 30, 1)
    template = carry_template(initial, make(), fednova=True)
    trained = [_trained(initial, seed=20 + i) for i in range(len(COUNTS))]
    aggregator = HEAggregator(
        keys[1], expected_values=int(flatten(template).size), run_id=1, server_round=1, layout=layout_id(template)
    )
    for i, (n, w, t) in enumerate(zip(COUNTS, trained, steps, strict=True)):
        carried = pack(trained=w, base=initial, optimizer=make(), local_steps=t)
        assert layout_id(carried) == layout_id(template)
        aggregator.add(
            encrypt_update(carried, num_examples=n, context=ctx, run_id=1, server_round=1), institution=str(i)
        )
    tau = effective_steps(list(zip(COUNTS, steps, strict=True)))
    summed, _ = aggregator.result(effective_steps=tau)
    assert summed.header.effective_steps == tau

    decrypted = decrypt_sum(summed, context=ctx, template=template)
    mine = next_global(decrypted, model=initial, optimizer=make(), effective_steps=summed.header.effective_steps)
    updates = [
        ClientUpdate(f"h{i}", i, w, n, t) for i, (n, w, t) in enumerate(zip(COUNTS, trained, steps, strict=True))
    ]
    expected = make().step(current=initial, average=fednova(updates, reference=initial))
    for k in initial:
        assert mine[k].dtype == initial[k].dtype
        np.testing.assert_allclose(mine[k], expected[k], atol=1e-5)
        assert np.abs(mine[k] - make().step(current=initial, average=fedavg(updates))[k]).max() > 1e-3


def test_fednova_carries_the_base_with_fedavg_too() -> None:
    model = _tiny(1)
    assert flatten(carry_template(model, ServerOptimizer(), fednova=True)).size == 2 * flatten(model).size
    assert flatten(carry_template(model, FedAdam(), fednova=True)).size == 4 * flatten(model).size + 1
