"""The CKKS key ceremony with real TenSEAL contexts: a hospital makes the key set, the coordinator relays
sealed blobs it cannot open, every hospital unseals its copy; revocation and rotation make a new key set.

The secret scan loads every file in a folder as a TenSEAL context, a private key and an X25519 key:
after the whole flow the coordinator's folder holds no secret of any hospital, and each site only its own.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from typer.testing import CliRunner

from common.he.hospital import encrypt_update
from common.he.keys import HEKeyError, key_id, load_secret_context, load_server_context
from common.he.wire import InvalidCiphertext
from fedcare.cli import app
from fedcare.demo_sites import join_and_register
from fedcare.federation_dir import FederationDir, init_federation
from fedcare.he_ceremony import CeremonyError, KeySetBundle, install_sealed_secret, make_key_set
from fedcare.he_relay import RelayError, key_set_problem, relay_key_set, server_key_files
from fedcare.kits import KitOptions
from fedcare.registration import register_institution, revoke_institution
from fedcare.roster import write_roster
from fedcare.sealing import SealingError
from fedcare.site import SiteDir, install_kit, join_site
from server.he_aggregate import HEAggregator
from tests.support.secret_scan import scan_for_secrets, tenseal_contexts

NAMES = ["St Mary", "St Luke", "General"]
WEIGHTS = OrderedDict(w=np.linspace(-1.0, 1.0, 3000).reshape(60, 50), b=np.full(7, 0.25))


@dataclass
class Ceremony:
    fed: FederationDir
    sites: dict[str, SiteDir]
    bundle: KeySetBundle

    def sealing_keys(self) -> list[str]:
        return [s.joined_request().sealing_public_key for s in self.sites.values()]


def _run_ceremony(fed: FederationDir, sites: dict[str, SiteDir], *, maker: str, bundle_dir: Path) -> KeySetBundle:
    """Roster out, key set made at `maker`, relayed, installed at every other site from its kit."""
    roster_file, roster = write_roster(fed)
    bundle = make_key_set(sites[maker], roster, bundle=bundle_dir)
    relay_key_set(fed, bundle.directory)
    for name in roster.slugs:
        entry = next(e for e in roster.entries if e.slug == name)
        if entry.institution != maker:
            install_kit(fed.kit_dir(entry.institution), sites[entry.institution].root)
    return bundle


@pytest.fixture
def ceremony(tmp_path: Path) -> Ceremony:
    fed = init_federation(tmp_path / "coordinator", control_address="127.0.0.1:9", budget_url="")
    sites = join_and_register(fed, tmp_path / "sites", NAMES)
    return Ceremony(fed, sites, _run_ceremony(fed, sites, maker="St Mary", bundle_dir=tmp_path / "bundle-1"))


def test_every_hospital_holds_the_key_set_and_the_coordinator_only_the_key_free_context(ceremony: Ceremony) -> None:
    for site in ceremony.sites.values():
        assert key_id(load_secret_context(site.he_secret_context)) == ceremony.bundle.key_id
        assert site.he_secret_context.stat().st_mode & 0o077 == 0
        config = site.node_config.read_text()
        assert f'he-secret-context = "{site.he_secret_context}"' in config
    server = load_server_context(server_key_files(ceremony.fed).server_context)  # refuses a secret key
    assert server.key_id == ceremony.bundle.key_id
    assert scan_for_secrets(ceremony.bundle.directory, sealing_public_keys=ceremony.sealing_keys()) == []
    assert key_set_problem(ceremony.fed) is None


def test_the_secret_scan_finds_no_hospital_secret_at_the_coordinator_and_only_its_own_at_each_site(
    ceremony: Ceremony,
) -> None:
    fed = ceremony.fed
    at_coordinator = scan_for_secrets(fed.root, sealing_public_keys=ceremony.sealing_keys())
    # Only the coordinator's own keys: the CA key and the TLS keys of the budget service and the SuperLink.
    assert sorted((f.path.relative_to(fed.root).as_posix(), f.kind) for f in at_coordinator) == [
        ("budget/server.key", "private-key"),
        ("ca/ca.key", "private-key"),
        ("superlink/server.key", "private-key"),
    ]
    node_keys = {" ".join(s.node_public_key.read_text().split()[:2]) for s in ceremony.sites.values()}
    assert not {f.public for f in at_coordinator} & node_keys
    assert [path for path, ctx in tenseal_contexts(fed.root) if ctx.is_private()] == []

    for site in ceremony.sites.values():
        own = {
            (site.node_key.name, "private-key", " ".join(site.node_public_key.read_text().split()[:2])),
            (site.sealing_key.name, "nacl-private-key", site.joined_request().sealing_public_key),
            (site.he_secret_context.name, "tenseal-secret-context", ceremony.bundle.key_id),
        }
        found = scan_for_secrets(site.root, sealing_public_keys=ceremony.sealing_keys())
        assert {(f.path.relative_to(site.root).as_posix(), f.kind, f.public) for f in found} == own


def test_a_captured_update_cannot_be_read_by_anything_at_the_coordinator(ceremony: Ceremony) -> None:
    mary = load_secret_context(ceremony.sites["St Mary"].he_secret_context)
    update = encrypt_update(WEIGHTS, num_examples=12, context=mary, run_id=5, server_round=1)
    contexts = tenseal_contexts(ceremony.fed.root)
    assert [p.name for p, _ in contexts] == ["he-public.ctx"]  # the only context there, key-free
    for _, ctx in contexts:
        for chunk in update.chunks:
            vector = ts.ckks_vector_from(ctx, chunk)
            with pytest.raises(ValueError, match="doesn't hold a secret_key"):
                vector.decrypt()
    found = scan_for_secrets(ceremony.fed.root, sealing_public_keys=ceremony.sealing_keys())
    assert all(f.kind == "private-key" for f in found)  # TLS/CA keys: they decrypt neither CKKS nor sealed blobs
    luke = load_secret_context(ceremony.sites["St Luke"].he_secret_context)  # a hospital can, as a control
    first = np.asarray(ts.ckks_vector_from(luke, update.chunks[0]).decrypt())
    assert np.allclose(first[:10], 12 * WEIGHTS["w"].ravel()[:10], atol=1e-4)


def test_a_sealed_blob_opens_only_at_its_own_site(ceremony: Ceremony) -> None:
    luke_kit = ceremony.fed.kit_dir("St Luke")
    with pytest.raises(SealingError, match="sealed for another site"):
        install_sealed_secret(
            ceremony.sites["General"], sealed=luke_kit / "he-secret.sealed", params=luke_kit / "he-params.json"
        )


def test_a_blob_that_does_not_match_its_key_id_is_refused(ceremony: Ceremony, tmp_path: Path) -> None:
    kit = ceremony.fed.kit_dir("St Luke")
    params = json.loads((kit / "he-params.json").read_text())
    forged = tmp_path / "forged-params.json"
    forged.write_text(json.dumps({**params, "key_id": "0" * 32}))
    with pytest.raises(CeremonyError, match=f"holds key set {ceremony.bundle.key_id}"):
        install_sealed_secret(ceremony.sites["St Luke"], sealed=kit / "he-secret.sealed", params=forged)


def test_the_relay_refuses_a_secret_context_a_missing_blob_a_stale_roster_and_a_coordinator_secret(
    ceremony: Ceremony, tmp_path: Path
) -> None:
    fed, bundle = ceremony.fed, ceremony.bundle
    leaky = tmp_path / "leaky"
    shutil.copytree(bundle.directory, leaky)
    shutil.copyfile(ceremony.sites["St Mary"].he_secret_context, leaky / "he-public.ctx")
    with pytest.raises(HEKeyError, match="SECRET key"):
        relay_key_set(fed, leaky)

    missing = tmp_path / "missing"
    shutil.copytree(bundle.directory, missing)
    (missing / "sealed" / "general.sealed").unlink()
    with pytest.raises(RelayError, match=r"general\.sealed is missing"):
        relay_key_set(fed, missing)

    revoke_institution(fed, "General", superlink=None, budget=None)
    with pytest.raises(RelayError, match="was made for roster") as stale:
        relay_key_set(fed, bundle.directory)
    assert "general" in str(stale.value)

    legacy = server_key_files(fed).hospital_context
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"a coordinator-made secret")
    with pytest.raises(RelayError, match="treat that key as exposed"):
        relay_key_set(fed, bundle.directory)


def test_revocation_then_rotation_makes_a_new_key_set_the_revoked_site_cannot_use(
    ceremony: Ceremony, tmp_path: Path
) -> None:
    fed, old = ceremony.fed, ceremony.bundle
    revoke_institution(fed, "General", superlink=None, budget=None)
    problem = key_set_problem(fed)
    assert problem is not None and "general" in problem and "rotate" in problem

    sites = {n: s for n, s in ceremony.sites.items() if n != "General"}
    new = _run_ceremony(fed, sites, maker="St Luke", bundle_dir=tmp_path / "bundle-2")
    assert new.key_id != old.key_id and new.recipients == ("st-luke", "st-mary")
    assert key_set_problem(fed) is None
    assert not (fed.kit_dir("General") / "he-secret.sealed").exists()  # withdrawn from the revoked kit
    assert load_server_context(server_key_files(fed).server_context).key_id == new.key_id
    for site in sites.values():
        assert key_id(load_secret_context(site.he_secret_context)) == new.key_id
    retired = ceremony.sites["St Mary"].root / "he-retired" / old.key_id / "he-secret.ctx"
    assert key_id(load_secret_context(retired)) == old.key_id  # kept: old encrypted models stay readable

    mary = load_secret_context(ceremony.sites["St Mary"].he_secret_context)
    update = encrypt_update(WEIGHTS, num_examples=3, context=mary, run_id=9, server_round=1)
    revoked = load_secret_context(ceremony.sites["General"].he_secret_context)
    noise = np.asarray(ts.ckks_vector_from(revoked, update.chunks[0]).decrypt())
    assert not np.allclose(noise[:10], 3 * WEIGHTS["w"].ravel()[:10], atol=1.0)  # the old key reads noise

    # The server does not mix key sets: an update under the revoked key set is rejected by name.
    stale = encrypt_update(WEIGHTS, num_examples=3, context=revoked, run_id=9, server_round=1)
    server = load_server_context(server_key_files(fed).server_context)
    aggregator = HEAggregator(
        server.context_bytes, expected_values=3007, run_id=9, server_round=1, key_id=server.key_id
    )
    aggregator.add(update, institution="St Mary")
    with pytest.raises(InvalidCiphertext, match=f"under key set {old.key_id}, the federation's is {new.key_id}"):
        aggregator.add(stale, institution="General")


def test_only_a_site_in_the_roster_makes_a_key_set(ceremony: Ceremony, tmp_path: Path) -> None:
    revoke_institution(ceremony.fed, "General", superlink=None, budget=None)
    _, roster = write_roster(ceremony.fed)
    with pytest.raises(CeremonyError, match="not in the roster"):
        make_key_set(ceremony.sites["General"], roster, bundle=tmp_path / "b")
    with pytest.raises(CeremonyError, match="outside the site directory"):
        make_key_set(ceremony.sites["St Mary"], roster, bundle=ceremony.sites["St Mary"].root / "b")


def test_the_ceremony_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    fed = init_federation(tmp_path / "coordinator", control_address="127.0.0.1:9", budget_url="")
    sites = join_and_register(fed, tmp_path / "sites", ["St Mary", "St Luke"])
    mary, luke = sites["St Mary"].root, sites["St Luke"].root
    steps = [
        ["he", "roster", "--federation", str(fed.root)],
        [
            "he",
            "keygen",
            "--site",
            str(mary),
            "--roster",
            str(fed.he_dir / "roster.json"),
            "--bundle",
            str(tmp_path / "b"),
        ],
        ["he", "relay", "--bundle", str(tmp_path / "b"), "--federation", str(fed.root)],
        ["he", "install", "--kit", str(fed.kit_dir("St Luke")), "--site", str(luke)],
    ]
    outputs = []
    for step in steps:
        done = runner.invoke(app, step)
        assert done.exit_code == 0, (step, done.output)
        outputs.append(done.output)
    kid = key_id(load_secret_context(luke / "he-secret.ctx"))
    assert kid == key_id(load_secret_context(mary / "he-secret.ctx"))
    assert all(kid in out for out in outputs[1:])
    refused = runner.invoke(app, ["he", "keygen", "--site", str(mary)])
    assert refused.exit_code != 0 and "--roster" in refused.output


def test_a_hospital_that_rejoins_with_new_keys_needs_a_new_key_set(ceremony: Ceremony) -> None:
    fed = ceremony.fed
    site, request = join_site(ceremony.sites["St Luke"].root, "St Luke", force=True)
    register_institution(
        fed, KitOptions("St Luke", 10.0, 1e-5), request=request, rotate=True, superlink=None, budget=None
    )
    assert not (fed.kit_dir("St Luke") / "he-secret.sealed").exists()  # sealed to the replaced key
    assert "sealing key changed" in (key_set_problem(fed) or "")
    install_kit(fed.kit_dir("St Luke"), site.root)  # the re-issued kit fits the new keys
    with pytest.raises(RelayError, match="was made for roster"):
        relay_key_set(fed, ceremony.bundle.directory)
