"""Sealed boxes: only the site holding the sealing key opens what was sealed to it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedcare.sealing import SealingError, load_private_key, make_sealing_keys, read_public_key, seal, unseal


def test_sealed_to_one_site_opens_there_only(tmp_path: Path) -> None:
    mary, luke = make_sealing_keys(tmp_path / "mary"), make_sealing_keys(tmp_path / "luke")
    secret = b"the budget token"
    blob = seal(secret, public_b64=read_public_key(mary.public_key))
    assert secret not in blob
    assert unseal(blob, private_key=load_private_key(mary.private_key), what="blob") == secret
    with pytest.raises(SealingError, match="does not open with this site's sealing key"):
        unseal(blob, private_key=load_private_key(luke.private_key), what="blob")
    with pytest.raises(SealingError, match="damaged"):
        unseal(blob[:-1] + bytes([blob[-1] ^ 1]), private_key=load_private_key(mary.private_key), what="blob")


def test_the_private_key_is_0600_and_the_public_key_is_readable(tmp_path: Path) -> None:
    keys = make_sealing_keys(tmp_path / "site")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.public_key.stat().st_mode) == 0o644
    assert keys.fingerprint.startswith("SHA256:")


def test_bad_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SealingError, match="32 bytes"):
        seal(b"x", public_b64="c2hvcnQ=")
    with pytest.raises(SealingError, match="no sealing key"):
        load_private_key(tmp_path / "missing.key")
