"""The registration request: public parts only, versioned, and every field checked on read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.node_keys import read_fingerprint
from fedcare.registration_request import REQUEST_FORMAT, RequestError, read_request
from fedcare.sealing import read_public_key
from fedcare.site import join_site
from tests.support.secret_scan import scan_for_secrets


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    site, _ = join_site(tmp_path / "site", "St Mary")
    return site.request


def test_a_request_holds_the_public_halves_and_reads_back(request_file: Path) -> None:
    site = request_file.parent
    raw = json.loads(request_file.read_text())
    assert set(raw) == {
        "format",
        "institution",
        "node-public-key",
        "node-key-fingerprint",
        "sealing-public-key",
        "created-at",
    }
    assert raw["format"] == REQUEST_FORMAT
    request = read_request(request_file)
    assert request.institution == "St Mary"
    assert request.node_public_key == (site / "node.pub").read_text().strip()
    assert request.node_key_fingerprint == read_fingerprint(site / "node.pub")
    assert request.sealing_public_key == read_public_key(site / "sealing.pub")
    alone = request_file.parent.parent / "alone"
    alone.mkdir()
    (alone / "request.json").write_bytes(request_file.read_bytes())
    assert scan_for_secrets(alone) == []  # nothing in it is a secret, whatever it is loaded as


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(format="fedcare-registration-request/0"), "format"),
        (lambda r: r.pop("institution"), "institution"),
        (lambda r: r.update(institution="!!!"), "institution"),
        (lambda r: r.update({"node-public-key": "ssh-ed25519 AAAA nonsense"}), "node-public-key"),
        (lambda r: r.update({"node-key-fingerprint": "SHA256:edited"}), "node-key-fingerprint"),
        (lambda r: r.update({"sealing-public-key": "c2hvcnQ="}), "sealing-public-key"),
        (lambda r: r.update({"sealing-public-key": "not base64!"}), "sealing-public-key"),
        (lambda r: r.update({"created-at": "yesterday"}), "created-at"),
    ],
)
def test_a_bad_field_is_named_with_the_file(request_file: Path, edit, field: str) -> None:
    raw = json.loads(request_file.read_text())
    edit(raw)
    request_file.write_text(json.dumps(raw))
    with pytest.raises(RequestError) as refused:
        read_request(request_file)
    assert str(request_file) in str(refused.value) and f"'{field}'" in str(refused.value)


def test_not_json_or_missing_is_refused_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="no such registration request"):
        read_request(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RequestError, match=r"bad\.json: not JSON"):
        read_request(tmp_path / "bad.json")
