"""docker-compose.yml, run for real: a private dockerd, the image built from deploy/Dockerfile, the whole stack,
a 2-round run submitted through the `submit` service, results.json and the privacy ledger checked.

Phase timings land in ~/.cache/fedcare-deploy/last-timings.json.
"""

from __future__ import annotations

import json

import pytest

from fedcare.compose import write_hospital_override
from server.budget_client.admin import BudgetAdmin

from .conftest import HOSPITALS, ComposeStack
from .docker_env import PhaseTimer

# From scratch (apt, debootstrap, a cold pip) on a busy 2-core machine it has taken 14 minutes; about 4 on an idle one.
pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(1800)]


def test_compose_stack_trains_and_accounts(compose_stack: ComposeStack, timer: PhaseTimer, tmp_path) -> None:
    stack = compose_stack
    # The override a later registration emits merges with the stack (compose itself validates it).
    override = write_hospital_override(stack.federation, "St. Mary's", slug="st-mary-s", epsilon_limit=5.0)
    services = stack.compose("config", "--services", overrides=(override,)).stdout.split()
    assert "st-mary-s" in services and "hospital-1" in services, services
    stack.compose("config", "--quiet")
    stack.compose("--profile", "postgres", "--profile", "gpu", "--profile", "tools", "config", "--quiet")

    with timer.phase("stack_up"):
        stack.compose("up", "-d", "--no-build", "superlink", "budget")
        stack.wait_healthy(["superlink", "budget"])
    with timer.phase("register"):  # `fedcare institution register`, against the running SuperLink and ledger
        stack.register(epsilon_limit=10.0, delta=1e-5)
    with timer.phase("stack_up"):
        stack.compose("up", "-d", "--no-build")
        # Four warm executors (three hospitals' and the ServerApp's) warm up at once; at load 30 on 2 cores that,
        # and healthchecks timing out at 5 s, took more than 180 s.
        stack.wait_healthy(["superlink", "budget", "serverapp", *HOSPITALS], timeout=420)

    with timer.phase("run"):
        # HE mode: the most wiring (hospitals' secret contexts from their kits, the server's key-free context).
        done = stack.compose(
            "run",
            "--rm",
            "--no-deps",
            "submit",
            "--rounds",
            "2",
            "--he",
            "--wait",
            "--timeout",
            "480",
            timeout=600,
            check=False,
        )
    assert done.returncode == 0, (
        f"submit failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{stack.logs()}"
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "finished:completed", outcome
    results = outcome["results"]
    assert results is not None, "results.json was not written"
    assert results["status"] == "completed", results
    assert results["privacy_mode"] == "he", results["privacy_mode"]
    assert len(results["rounds"]) == 2
    for rnd in results["rounds"]:
        assert rnd["status"] == "aggregated", rnd
        assert sorted(rnd["participants"]) == HOSPITALS, rnd
        assert sorted(rnd["epsilon"]) == HOSPITALS and all(e and e > 0 for e in rnd["epsilon"].values()), rnd

    admin_token = (stack.federation / "budget" / "admin-token").read_text().strip()
    with BudgetAdmin(stack.budget_url, admin_token) as admin:
        budgets = admin.budgets()
    assert sorted(budgets) == HOSPITALS, budgets
    for name, view in budgets.items():
        assert view.rounds == 2, (name, view)
        assert view.epsilon_spent > 0, (name, view)
