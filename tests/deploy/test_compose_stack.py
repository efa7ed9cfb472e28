"""docker-compose.yml, run for real: a private dockerd, the image built from deploy/Dockerfile, the whole stack,
a 2-round run submitted through the `submit` service, results.json and the privacy ledger checked.

Phase timings land in ~/.cache/fedcare-deploy/last-timings.json.
"""

from __future__ import annotations

import json

import pytest
import tomli_w

from server.budget_client import BudgetClient

from .conftest import HOSPITALS, ComposeStack
from .docker_env import REPO_ROOT, PhaseTimer, run

pytestmark = pytest.mark.slow


def register_nodes(stack: ComposeStack, tmp_home) -> None:
    """Register each hospital's public key with the SuperLink (`flwr supernode register`)."""
    # TODO(issue 7): `fedcare institution register` does this (and the ledger registration below).
    tmp_home.mkdir(parents=True, exist_ok=True)
    connection = {"address": stack.control_address,
                  "root-certificates": str(stack.federation / "superlink" / "ca.crt")}
    (tmp_home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "fedcare", "fedcare": connection}}))
    flwr = str(REPO_ROOT / ".venv" / "bin" / "flwr") if (REPO_ROOT / ".venv" / "bin" / "flwr").exists() else "flwr"
    env = {**stack.env, "FLWR_HOME": str(tmp_home)}
    for name in HOSPITALS:
        done = run([flwr, "supernode", "register", str(stack.federation / "institutions" / name / "node.pub"), "fedcare",
                    "--name", name, "--format", "json"], env=env, timeout=120, check=False)
        assert '"success": true' in done.stdout.replace("\n", " ") or done.returncode == 0, done.stdout + done.stderr


def test_compose_stack_trains_and_accounts(compose_stack: ComposeStack, timer: PhaseTimer, tmp_path) -> None:
    stack = compose_stack
    with timer.phase("stack_up"):
        stack.compose("up", "-d", "--no-build", "superlink", "budget")
        stack.wait_healthy(["superlink", "budget"])
        register_nodes(stack, tmp_path / "flwr-home")
        admin_token = (stack.federation / "budget" / "admin-token").read_text().strip()
        with BudgetClient(stack.budget_url, admin_token) as admin:
            for name in HOSPITALS:
                admin.ensure_institution(name, 10.0, 1e-5)
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy(["superlink", "budget", "serverapp", *HOSPITALS])

    with timer.phase("run"):
        done = stack.compose("run", "--rm", "--no-deps", "submit", "--rounds", "2", "--wait", "--timeout", "480",
                             timeout=600, check=False)
    assert done.returncode == 0, f"submit failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{stack.logs()}"
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "finished:completed", outcome
    results = outcome["results"]
    assert results is not None, "results.json was not written"
    assert results["status"] == "completed", results
    assert len(results["rounds"]) == 2
    for rnd in results["rounds"]:
        assert rnd["status"] == "aggregated", rnd
        assert sorted(rnd["participants"]) == HOSPITALS, rnd
        assert sorted(rnd["epsilon"]) == HOSPITALS and all(e and e > 0 for e in rnd["epsilon"].values()), rnd

    with BudgetClient(stack.budget_url, admin_token) as admin:
        budgets = admin.budgets()
    assert sorted(budgets) == HOSPITALS, budgets
    for name, view in budgets.items():
        assert view.rounds == 2, (name, view)
        assert view.epsilon_spent > 0, (name, view)
