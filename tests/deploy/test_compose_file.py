"""docker-compose.yml read as data (fast, no Docker): every service is healthchecked and hardened, and the
hospitals' services are exactly what `fedcare.compose` renders for a hospital registered later."""

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
