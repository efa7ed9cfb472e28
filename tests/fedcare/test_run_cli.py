"""`fedcare run resume`: it refuses, naming why, a run directory it cannot resume (the decision itself is
tested in tests/server/test_checkpoint.py; a real resume in tests/integration/test_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from common.atomic import write_json_atomic
from fedcare.cli import app
from fedcare.federation_dir import init_federation
from server.checkpoint import RUN_CONFIG_FILE, Checkpoint, write_checkpoint


def test_resume_refuses_a_completed_run_and_a_directory_that_is_no_run(tmp_path: Path) -> None:
    fed = init_federation(tmp_path / "coordinator", control_address="127.0.0.1:9", budget_url="")
    run_dir = tmp_path / "runs" / "12"
    runner = CliRunner()

    answer = runner.invoke(app, ["run", "resume", str(run_dir), "--federation", str(fed.root)])
    assert answer.exit_code == 2 and "no run-config.json" in " ".join(answer.output.split())  # rich wraps lines

    write_json_atomic(run_dir / RUN_CONFIG_FILE, {"num-rounds": 2})
    results = {"status": "completed", "num_rounds": 2, "rounds": []}
    write_checkpoint(run_dir, Checkpoint("12", 2, 2, None, rounds={}, results=results))
    (run_dir / "results.json").write_text(json.dumps(results))
    answer = runner.invoke(app, ["run", "resume", str(run_dir), "--federation", str(fed.root)])
    assert answer.exit_code == 2 and "run 12 completed already" in " ".join(answer.output.split())
