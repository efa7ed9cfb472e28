"""Metrics follow the mode: the ServerApp's own loop (`server.app.main`) against the real ClientApp
handlers through a loopback grid, with real TenSEAL and Flower's real SecAgg+ mod and workflow.

In HE and SecAgg+ modes no hospital's loss or accuracy reaches the server unless the run asks for
per-site metrics; the federation figures it records are still the example-weighted means of what the
hospitals computed, which a per-site run of the same federation (same seed, DP off) shows in clear.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict

from common.demo_data import DemoSplit
from server.app import main
from server.fedavg import weighted_mean
from tests.server.loopback import RUN, LoopbackGrid, hospital_node_configs

pytestmark = pytest.mark.usefixtures("serverapp_identity")
PER_SITE_KEYS = {"eval-loss", "eval-accuracy", "eval-examples", "train-loss", "skipped-steps"}


class _ServerLog(logging.Handler):
    """What the ServerApp's side logs (its loop, rounds, aggregator), not the in-process hospitals."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("flwr.fedcare.server", "server.")):
            self.lines.append(record.getMessage())


@pytest.fixture
def server_log() -> Iterator[_ServerLog]:
    handler = _ServerLog()
    loggers = [logging.getLogger("flwr.fedcare.server"), logging.getLogger("server")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def _run(tmp_path: Path, split: DemoSplit, *, mode: str, metrics: str, he_keys: Any = None) -> tuple[dict, list]:
    """One whole run through `server.app.main`; returns results.json and every reply the server received."""
    every = {"he-secret-context": str(he_keys.hospital_context)} if he_keys else {}
    hospitals = hospital_node_configs(split.hospital_paths, state_root=tmp_path, every=every)
    replies: list[Message] = []
    grid = LoopbackGrid(hospitals, tamper=lambda node, reply: replies.append(reply))
    run_config: dict[str, Any] = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "num-rounds": 2,
        "local-epochs": 1,
        "dp": False,
        "min-nodes": 3,
        "privacy-mode": mode,
        "metrics": metrics,
        "poll-interval": 0.01,
        **({"he-public-context": str(he_keys.server_context)} if he_keys else {}),
    }
    context = Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(grid, context)  # type: ignore[arg-type]
    return json.loads((tmp_path / "runs" / str(RUN) / "results.json").read_text()), replies


def _scored(results: dict) -> list[dict]:
    return [results["initial"], *results["rounds"]]


def _check_aggregate_run(aggregate: dict, replies: list[Message], per_site: dict, lines: list[str], *, tol: float):
    # What the server received: no hospital's loss or accuracy, in any message of the run.
    for reply in replies:
        if "metrics" in reply.content:
            assert not PER_SITE_KEYS & set(reply.content["metrics"]), dict(reply.content["metrics"])
    assert aggregate["metrics"] == "aggregate" and aggregate["status"] == "completed"
    assert all(entry["per_institution"] == {} for entry in _scored(aggregate))

    # The per-site run's figures, as each hospital computed them, in clear.
    site_values = {
        value
        for entry in _scored(per_site)
        for site in entry["per_institution"].values()
        for value in (site["loss"], site["accuracy"])
    }
    text = "\n".join(lines)

    def written(value: float) -> bool:  # as a number of its own: an accuracy of 0.5 is not in "10.51"
        return any(re.search(rf"(?<![\d.]){re.escape(form)}(?!\d)", text) for form in (repr(value), f"{value:.4f}"))

    assert not [v for v in site_values if written(v)]

    for mine, theirs in zip(_scored(aggregate), _scored(per_site), strict=True):
        sites = theirs["per_institution"].values()
        assert len(sites) == 3
        expected_loss = weighted_mean([(s["loss"], s["examples"]) for s in sites])
        expected_accuracy = weighted_mean([(s["accuracy"], s["examples"]) for s in sites])
        assert mine["loss"] == pytest.approx(expected_loss, abs=tol)
        assert mine["accuracy"] == pytest.approx(expected_accuracy, abs=tol)
    for mine, theirs in zip(aggregate["rounds"], per_site["rounds"], strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=tol)
    # Not merely close to one another: the federation scores moved over the run.
    assert aggregate["initial"]["accuracy"] != aggregate["rounds"][-1]["accuracy"]


def test_he_runs_report_only_federation_figures_and_they_are_the_weighted_means(
    tmp_path: Path, split: DemoSplit, he_keys: Any, server_log: _ServerLog
) -> None:
    per_site, _ = _run(tmp_path / "per-site", split, mode="he", metrics="per-site", he_keys=he_keys)
    assert per_site["metrics"] == "per-site"
    assert any("PER-SITE METRICS" in line for line in server_log.lines)
    server_log.lines.clear()

    aggregate, replies = _run(tmp_path / "aggregate", split, mode="he", metrics="auto", he_keys=he_keys)
    assert not any("PER-SITE METRICS" in line for line in server_log.lines)
    # CKKS: the sum is off by about 1e-8 per value; the two runs' models differ by as little.
    _check_aggregate_run(aggregate, replies, per_site, server_log.lines, tol=1e-5)
    assert {r.metadata.message_type for r in replies} >= {"train", "evaluate", "query.metrics"}


def test_secagg_runs_report_only_federation_figures_and_they_are_the_weighted_means(
    tmp_path: Path, split: DemoSplit, server_log: _ServerLog
) -> None:
    per_site, _ = _run(tmp_path / "per-site", split, mode="secagg", metrics="per-site")
    assert any("PER-SITE METRICS" in line for line in server_log.lines)
    server_log.lines.clear()

    aggregate, replies = _run(tmp_path / "aggregate", split, mode="secagg", metrics="aggregate")
    bound = max(entry["secagg"]["quantization_error_bound"] for entry in aggregate["rounds"])
    # Each slot of the unmasked metrics is off by < bound; a figure is a ratio over the validation share
    # (about 1/4 of the training rows), and both runs' models differ by the same quantization.
    _check_aggregate_run(aggregate, replies, per_site, server_log.lines, tol=20 * bound)
