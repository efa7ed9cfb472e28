"""The SuperExec auth secret outlives a SuperLink restart (fedcare/superexec_secret.py, issue 16).

A restarted SuperLink with a new secret turned away the claims of the ServerApp executor that outlived it;
Flower's HTTP retry then SIGINTed the executor, and the resumed run never got a ServerApp.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from common.private_files import is_private
from fedcare.federation import LocalFederation
from fedcare.superexec_secret import keep_superexec_secret


def test_the_secret_is_made_once_private_and_then_kept(tmp_path: Path) -> None:
    path = tmp_path / "superlink" / "superexec-secret"
    assert keep_superexec_secret(path) is True
    made = path.read_bytes()
    assert len(made) >= 32 and is_private(path)
    assert keep_superexec_secret(path) is False
    assert path.read_bytes() == made


def test_an_empty_secret_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "superexec-secret"
    path.write_bytes(b"")
    assert keep_superexec_secret(path) is True
    assert path.read_bytes()


def test_a_restarted_superlink_accepts_the_secret_its_surviving_serverapp_executor_signs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = LocalFederation(tmp_path / "fed", insecure=True)
    secrets_read: dict[str, list[bytes]] = {"superlink": [], "serverapp-executor": []}

    def spawn(name: str, args: list[str], **_: object) -> SimpleNamespace:
        # Both read the file once, when they start, as the real processes do.
        secrets_read[name].append(Path(args[args.index("--superexec-auth-secret-file") + 1]).read_bytes())
        return SimpleNamespace(name=name, popen=SimpleNamespace(poll=lambda: None))  # alive

    monkeypatch.setattr(fed, "_spawn", spawn)
    monkeypatch.setattr(fed, "wait_for_port", lambda *args, **kwargs: None)

    fed.start_superlink()
    fed.start_superlink()  # after a crash: the executor started by the first start is still running

    assert len(secrets_read["superlink"]) == 2 and len(secrets_read["serverapp-executor"]) == 1
    assert secrets_read["superlink"][1] == secrets_read["serverapp-executor"][0]
