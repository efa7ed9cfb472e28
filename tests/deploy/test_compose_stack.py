"""The split compose files, run for real: a private dockerd, the image built from deploy/Dockerfile, the coordinator
(deploy/coordinator) and each hospital (deploy/hospital) as separate compose projects on separate networks, the
hospitals reaching the coordinator only through its published ports on the host. A 2-round HE run submitted
through the coordinator's `submit` service, results.json and the privacy ledger checked, and each hospital's
view of the budget service over TLS. The one-host docker-compose.yml is validated by compose here and checked
statically in test_compose_file.py.

Phase timings land in ~/.cache/fedcare-deploy/last-timings.json.
"""

from __future__ import annotations

import json

import pytest

from fedcare.compose import write_hospital_override
from fedcare.federation_dir import FederationDir
from server.budget_client.admin import BudgetAdmin

from .conftest import HOSPITALS, SplitStack
from .docker_env import PhaseTimer
from .projects import ONE_HOST_FILE, ComposeProject, wait_healthy

# From scratch (apt, debootstrap, a cold pip) on a busy 2-core machine it has taken 14 minutes; about 4 on an idle one.
pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(1800)]

SITE = "/run/fedcare/site"


def published_ports(project: ComposeProject) -> dict[str, str]:
    """service -> docker's Ports column ("0.0.0.0:41234->9092/tcp" for a published port, "8000/tcp" for one that
    is not)."""
    out = project.daemon.docker(
        "ps",
        "--filter",
        f"label=com.docker.compose.project={project.name}",
        "--format",
        '{{.Label "com.docker.compose.service"}}\t{{.Ports}}',
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def test_split_stack_trains_and_accounts(split_stack: SplitStack, timer: PhaseTimer) -> None:
    stack = split_stack
    coordinator = stack.coordinator
    with timer.phase("config"):  # compose itself validates every file, the one-host one with a later hospital
        one_host = ComposeProject(
            coordinator.daemon,
            "fedcare-one-host",
            (ONE_HOST_FILE,),
            {**coordinator.env, "FEDCARE_FEDERATION": str(stack.federation)},
            coordinator.env_file,
        )
        override = write_hospital_override(stack.federation, "St. Mary's", slug="st-mary-s", epsilon_limit=5.0)
        one_host.overrides = (override,)
        services = one_host.compose("--profile", "postgres", "--profile", "gpu", "config", "--services").stdout
        assert {"st-mary-s", "hospital-1", "hospital-gpu", "postgres"} <= set(services.split()), services
        coordinator.compose("--profile", "tools", "config", "--quiet")
        stack.hospitals[HOSPITALS[0]].compose("config", "--quiet")

    with timer.phase("stack_up"):
        coordinator.compose("up", "-d", "--no-build", "superlink", "budget")
        wait_healthy({coordinator: ["superlink", "budget"]})
    with timer.phase("register"):  # join at each site, register in the coordinator's admin container, install
        stack.register(epsilon_limit=10.0, delta=1e-5)
    with timer.phase("stack_up"):
        coordinator.compose("up", "-d", "--no-build")
        for hospital in stack.hospitals.values():
            hospital.compose("up", "-d", "--no-build")
        wait_healthy(
            {coordinator: ["superlink", "budget", "serverapp"]} | {h: ["node"] for h in stack.hospitals.values()},
            # Four warm executors (three hospitals' and the ServerApp's) warm up at once; at load 30 on 2 cores
            # that, and healthchecks timing out at 5 s, took more than 180 s.
            timeout=420,
        )

    ports = published_ports(coordinator)  # the Fleet API and the budget service (TLS both), nothing else
    assert "->9092/tcp" in ports["superlink"] and "->8000" not in ports["superlink"], ports
    assert "->8470/tcp" in ports["budget"] and "->" not in ports["serverapp"], ports
    for hospital in stack.hospitals.values():
        assert "->" not in published_ports(hospital)["node"], hospital.name

    with timer.phase("run"):
        # HE mode: the most wiring (hospitals' secret contexts from their sites, the server's key-free context).
        done = coordinator.compose(
            "run", "--rm", "--no-deps", "submit", "--rounds", "2", "--he", "--wait", "--timeout", "480",
            timeout=600,
            check=False,
        )  # fmt: skip
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
    ca = FederationDir(stack.federation).ca_certificate
    with BudgetAdmin(stack.budget_url, admin_token, ca_certificate=ca) as admin:  # HTTPS, the federation CA only
        budgets = admin.budgets()
    assert sorted(budgets) == HOSPITALS, budgets
    for name, view in budgets.items():
        assert view.rounds == 2, (name, view)
        assert view.epsilon_spent > 0, (name, view)

    with timer.phase("budget_show"):  # a hospital, from its own container: its site's URL, CA and token
        own, other = HOSPITALS[0], HOSPITALS[1]
        script = (
            f"fedcare budget show --kit {SITE} --events 2; echo rc=$?; "
            f"fedcare budget show --kit {SITE} --institution {other}; echo rc=$?"
        )
        shown = stack.hospitals[own].compose("exec", "-T", "node", "sh", "-c", script, timeout=300)
    first, second = shown.stdout.split("rc=", 1)
    assert first.strip() and own in first and other not in first, shown.stdout
    assert second.startswith("0"), f"{own} could not read its own budget:\n{shown.stdout}\n{shown.stderr}"
    assert shown.stdout.rstrip().endswith("rc=1") and "403" in shown.stdout + shown.stderr, (shown.stdout, shown.stderr)
