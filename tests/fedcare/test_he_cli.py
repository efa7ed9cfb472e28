"""`fedcare he`: keygen and decrypt, end to end with real keys and ciphertexts."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from common.he.hospital import encrypt_update
from common.he.keys import load_secret_context, load_server_context
from server.he_aggregate import HEAggregator
from tests.common.he.helpers import size


def test_keygen_and_decrypt_commands(tmp_path) -> None:
    """keygen never prints key material; decrypt turns the server's encrypted model file into a state dict."""
    import torch
    from typer.testing import CliRunner

    from common.models import build_model
    from common.schema import DatasetSchema, FeatureSpec, save_schema
    from fedcare.he_cli import he_app

    runner = CliRunner()
    result = runner.invoke(he_app, ["keygen", "--out", str(tmp_path / "he")])
    assert result.exit_code == 0, result.output
    secret = (tmp_path / "he" / "hospital" / "he-secret.ctx").read_bytes()
    assert "key id" in result.output and secret.hex()[:64] not in result.output
    refused = runner.invoke(he_app, ["keygen", "--out", str(tmp_path / "x"), "--coeff-mod-bit-sizes", "60,50"])
    assert refused.exit_code == 2 and not (tmp_path / "x" / "hospital").exists()

    schema = DatasetSchema(label="y", num_classes=2, features=[FeatureSpec(name=f"f{i}") for i in range(4)])
    save_schema(schema, tmp_path / "schema.json")
    weights = OrderedDict((k, v.detach().numpy()) for k, v in build_model(schema, seed=3).state_dict().items())
    ctx = load_secret_context(tmp_path / "he" / "hospital" / "he-secret.ctx")
    server = load_server_context(tmp_path / "he" / "server" / "he-public.ctx")
    agg = HEAggregator(
        server.context_bytes, expected_values=size(weights), run_id=9, server_round=4, key_id=server.key_id
    )
    agg.add(encrypt_update(weights, num_examples=11, context=ctx, run_id=9, server_round=4), institution="h1")
    (tmp_path / "final_model.he").write_bytes(agg.result()[0].to_bytes())
    result = runner.invoke(
        he_app,
        [
            "decrypt",
            "--context",
            str(tmp_path / "he" / "hospital" / "he-secret.ctx"),
            "--encrypted",
            str(tmp_path / "final_model.he"),
            "--schema",
            str(tmp_path / "schema.json"),
            "--out",
            str(tmp_path / "final_model.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "final_model.pt")
    assert max(float(np.abs(state[k].numpy() - weights[k]).max()) for k in weights) < 1e-6
    wrong = runner.invoke(
        he_app,
        [
            "decrypt",
            "--context",
            str(tmp_path / "he" / "server" / "he-public.ctx"),
            "--encrypted",
            str(tmp_path / "final_model.he"),
            "--schema",
            str(tmp_path / "schema.json"),
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert wrong.exit_code == 1 and "holds no secret key" in wrong.output
