"""The compose files read as data (fast, no Docker). docker-compose.yml: every service is healthchecked and hardened,
and the hospitals' services are exactly what `fedcare.compose` renders for a hospital registered later.
deploy/coordinator and deploy/hospital: what each host publishes, the read-only site, no secret in the open."""

from __future__ import annotations

import yaml

from fedcare.compose import hospital_service, render_hospital_override

from .docker_env import REPO_ROOT

FEDCARE_ROLES = ("superlink", "serverapp", "budget", "hospital-1", "hospital-2", "hospital-3", "hospital-gpu")


def compose_file() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_every_role_is_healthchecked_hardened_and_writes_only_to_volumes() -> None:
    services = compose_file()["services"]
    for name in FEDCARE_ROLES:
        service = services[name]
        assert service["init"] is True and service["read_only"] is True, name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["user"].startswith("${FEDCARE_UID"), name
        assert any(v.endswith(":/var/lib/fedcare") for v in service["volumes"]), f"{name} has no state volume"
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name
    assert "healthcheck" in services["postgres"]
    assert services["superlink"]["command"][:4] == ["python", "-m", "fedcare.fast_superlink", "--"]  # long polls
    superlink = " ".join(services["superlink"]["command"])
    assert "--enable-supernode-auth" in superlink and "--ssl-keyfile" in superlink and "--insecure" not in superlink
    assert services["hospital-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_hospital_services_match_the_override_renderer() -> None:
    services = compose_file()["services"]
    for i in (1, 2, 3):
        in_file = {k: v for k, v in services[f"hospital-{i}"].items() if k != "build"}
        assert in_file == hospital_service(f"hospital-{i}", slug=f"hospital-{i}", epsilon_limit=10.0)


def test_override_for_a_new_hospital() -> None:
    override = yaml.safe_load(render_hospital_override("St. Mary's", slug="st-mary-s", epsilon_limit=4.0, gpu=True))
    service = override["services"]["st-mary-s"]
    assert "st-mary-s-state" in override["volumes"]
    assert "${ST_MARY_S_SITE:-./hospitals/st-mary-s}:/run/fedcare/site:ro" in service["volumes"]  # its own site
    assert (
        'institution="St. Mary\'s"' in service["command"][-1]
        and "ST_MARY_S_EPSILON_LIMIT:-4.0" in service["command"][-1]
    )
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


# ---- the split files: deploy/coordinator (one host) and deploy/hospital (each hospital's host) ----
SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "KEY")


def split_files() -> dict[str, dict]:
    return {
        role: yaml.safe_load((REPO_ROOT / "deploy" / role / "docker-compose.yml").read_text())
        for role in ("coordinator", "hospital")
    }


def test_the_coordinator_publishes_the_fleet_api_and_the_budget_service_over_tls_only() -> None:
    services = split_files()["coordinator"]["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert sorted(published) == ["budget", "superlink"], published
    (fleet,) = published["superlink"]
    (budget,) = published["budget"]
    assert fleet.endswith(":9092") and budget.endswith(":8470"), published  # no control API (8000)
    superlink = services["superlink"]["command"]
    assert superlink[:4] == ["python", "-m", "fedcare.fast_superlink", "--"]
    assert "--enable-supernode-auth" in superlink and not any(a.startswith("--insecure") for a in superlink)
    assert any(a.startswith("--ssl-keyfile=") for a in superlink) and "--fleet-api-address=0.0.0.0:9092" in superlink
    environment = services["budget"]["environment"]
    assert "FEDCARE_BUDGET_INSECURE_HTTP" not in environment
    assert environment["FEDCARE_BUDGET_TLS_CERTFILE"] and environment["FEDCARE_BUDGET_TLS_KEYFILE"]
    assert services["budget"]["healthcheck"]["test"][3] == "https"
    assert services["submit"]["environment"]["FEDCARE_BUDGET_URL"].startswith("https://")
    assert all(services[name]["profiles"] == ["tools"] for name in ("admin", "submit"))  # not started by `up`


def test_the_hospital_mounts_its_site_read_only_publishes_nothing_and_dials_a_configured_coordinator() -> None:
    node = split_files()["hospital"]["services"]["node"]
    assert "ports" not in node
    assert "${FEDCARE_SITE:-./site}:/run/fedcare/site:ro" in node["volumes"]
    assert "${FEDCARE_DATA:-./data}:/data:ro" in node["volumes"]
    assert "node-state:/var/lib/fedcare" in node["volumes"]
    command = node["command"]
    assert command[:3] == ["fedcare", "node", "start"] and "--kit=/run/fedcare/site" in command
    (superlink,) = [arg for arg in command if arg.startswith("--superlink=")]
    assert superlink.startswith("--superlink=${FEDCARE_COORDINATOR:?"), superlink
    assert "--insecure" not in command


def test_split_files_are_hardened_and_carry_no_secret_in_environment_or_command_lines() -> None:
    for role, spec in split_files().items():
        for name, service in spec["services"].items():
            where = f"{role}/{name}"
            assert service["init"] is True and service["read_only"] is True, where
            assert service["user"].startswith("${FEDCARE_UID"), where
            assert "no-new-privileges:true" in service["security_opt"], where
            if service.get("healthcheck", {}).get("disable") is not True:
                assert service["healthcheck"]["test"][0] == "CMD", where
            for variable, value in service.get("environment", {}).items():
                if any(word in variable for word in SECRET_WORDS):  # a file's path, never the secret itself
                    assert variable.endswith("_FILE") or str(value).startswith("/run/fedcare/"), (where, variable)
            for arg in [*service.get("entrypoint", []), *service.get("command", [])]:
                option = arg.split("=", 1)[0].lower()
                assert option not in ("--token", "--admin-token", "--password"), (where, arg)
                if any(word.lower() in option for word in SECRET_WORDS) and "=" in arg:
                    assert arg.split("=", 1)[1].strip('"').startswith("/run/fedcare/"), (where, arg)
            for volume in service.get("volumes", []):
                if "/run/fedcare/" in volume and role == "hospital":
                    assert volume.endswith(":ro"), (where, volume)
