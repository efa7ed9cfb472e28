"""The roster: active institutions registered by request, with their sealing keys; public and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.demo_sites import join_and_register
from fedcare.federation_dir import FederationDir, init_federation
from fedcare.kits import KitOptions
from fedcare.registration import register_institution, revoke_institution
from fedcare.roster import RosterError, build_roster, read_roster, write_roster


@pytest.fixture
def fed(tmp_path: Path) -> FederationDir:
    return init_federation(tmp_path / "fed", control_address="127.0.0.1:9", budget_url="")


def test_the_roster_lists_active_request_registrations_with_their_sealing_keys(
    fed: FederationDir, tmp_path: Path
) -> None:
    sites = join_and_register(fed, tmp_path / "sites", ["St Mary", "St Luke", "General"])
    register_institution(fed, KitOptions("One Step", 5.0, 1e-5), superlink=None, budget=None)
    path, roster = write_roster(fed)
    assert path == fed.he_dir / "roster.json" and path.stat().st_mode & 0o777 == 0o644
    assert roster.slugs == ["general", "st-luke", "st-mary"] and roster.skipped == ("One Step",)
    for name, site in sites.items():
        entry = roster.entry_for(name)
        assert entry is not None and entry.sealing_public_key == site.joined_request().sealing_public_key
    assert read_roster(path) == roster

    revoke_institution(fed, "St Luke", superlink=None, budget=None)
    after = build_roster(fed)
    assert after.slugs == ["general", "st-mary"] and after.roster_id != roster.roster_id


def test_an_edited_or_broken_roster_is_refused_by_field(fed: FederationDir, tmp_path: Path) -> None:
    join_and_register(fed, tmp_path / "sites", ["St Mary", "St Luke"])
    path, _ = write_roster(fed)
    raw = json.loads(path.read_text())
    raw["institutions"][0]["sealing-public-key"] = raw["institutions"][1]["sealing-public-key"]
    path.write_text(json.dumps(raw))
    with pytest.raises(RosterError, match="'roster-id' does not match"):
        read_roster(path)
    raw["institutions"][0]["sealing-public-key"] = "c2hvcnQ="
    path.write_text(json.dumps(raw))
    with pytest.raises(RosterError, match=r"institutions\[0\]: field 'sealing-public-key'"):
        read_roster(path)
    raw["institutions"][0].pop("slug")
    path.write_text(json.dumps(raw))
    with pytest.raises(RosterError, match=r"institutions\[0\]: field 'slug'"):
        read_roster(path)


def test_no_roster_without_a_request_registration(fed: FederationDir) -> None:
    register_institution(fed, KitOptions("One Step", 5.0, 1e-5), superlink=None, budget=None)
    with pytest.raises(RosterError, match="registered by request"):
        write_roster(fed)
