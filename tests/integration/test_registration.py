"""Node authentication end to end: kits issued before anything runs, a SuperLink that admits only registered keys.

Real processes (SuperLink, SuperNodes, budget service), no mocks: registered hospitals join and train, a
stranger's key and a foreign CA are refused while the federation carries on, and a revoked hospital is
shut out of both the SuperLink and the budget service.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from common.demo_data import DemoSplit
from common.tls import make_server_tls
from fedcare.fast_supernode import NODE_REFUSED_EXIT
from fedcare.federation import LocalFederation, ManagedProcess
from fedcare.federation_dir import init_federation
from fedcare.kits import KitOptions
from fedcare.node_keys import make_node_keys
from fedcare.registration import BudgetTarget, list_institutions, register_institution, revoke_institution
from fedcare.superlink_control import SuperLinkConnection
from server.budget.process import running_budget_service
from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetAuthError, BudgetConnection
from tests.integration.conftest import APP_DIR, assert_all_exited, wait_finished

pytestmark = pytest.mark.slow
NOT_RUNNING = "127.0.0.1:9"  # the SuperLink is not up yet when the kits are issued


def _wait_exit(proc: ManagedProcess, *, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None:
        assert time.monotonic() < deadline, f"{proc.name} still running after {timeout:.0f} s:\n{proc.log_tail()}"
        time.sleep(0.5)
    return proc.popen.returncode


def _wait_cut_off(proc: ManagedProcess, *, after: int, timeout: float = 90.0) -> None:
    """Cut off: its reconnections fail, or (fedcare's node) it stopped."""
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None:
        with proc.log_path.open("rb") as handle:
            handle.seek(after)
            if b"Connection attempt failed" in handle.read():
                return
        assert time.monotonic() < deadline, f"{proc.name} not cut off after {timeout:.0f} s:\n{proc.log_tail()}"
        time.sleep(0.5)


def _forged_kit(src: Path, dst: Path, *, new_key: bool = False, ca_from: Path | None = None) -> Path:
    """A copy of a kit with a key nobody registered, or trusting another CA."""
    shutil.copytree(src, dst)
    if new_key:
        make_node_keys(dst, comment="stranger")
    if ca_from is not None:
        shutil.copyfile(make_server_tls(ca_from).ca_certificate, dst / "ca.crt")
    return dst


def test_registered_hospitals_train_strangers_are_refused_and_a_revoked_hospital_is_shut_out(
    tmp_path: Path, breast_cancer_split: DemoSplit
) -> None:
    split = breast_cancer_split
    started = time.monotonic()
    fed_dir = init_federation(tmp_path / "fed", control_address=NOT_RUNNING, budget_url="")
    admin_token = fed_dir.admin_token()
    with running_budget_service(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=admin_token) as url:
        budget = BudgetTarget(url, admin_token)
        kits = []
        for name in ("hospital-1", "hospital-2"):  # the SuperLink is down: node keys wait, the ledger takes them now
            report = register_institution(
                fed_dir,
                KitOptions(name, 10.0, 1e-5),
                superlink=SuperLinkConnection(NOT_RUNNING, fed_dir.ca_certificate),
                budget=budget,
            )
            assert report.record.superlink == "pending" and report.record.budget == "registered", report
            kits.append(report.kit)
        institution_token = (kits[1] / "budget-token").read_text().strip()

        with LocalFederation(fed_dir.root, budget=budget) as fed, BudgetAdmin(url, admin_token) as admin:
            fed.start_superlink()  # completes the pending registrations
            records = {r.name: r for r in list_institutions(fed_dir)}
            assert all(r.superlink == "registered" and r.node_id for r in records.values()), records

            stranger = fed.add_hospital(
                institution="stranger",
                data_path=split.hospital_paths[2],
                wait=False,
                kit=_forged_kit(kits[0], tmp_path / "stranger", new_key=True),
            )
            impostor = fed.add_hospital(
                institution="impostor",
                data_path=split.hospital_paths[2],
                wait=False,
                kit=_forged_kit(kits[1], tmp_path / "impostor", ca_from=tmp_path / "other-ca"),
            )
            assert _wait_exit(impostor) != 0
            assert "handshake" in impostor.log_tail(40).lower()

            hospitals = [
                fed.add_hospital(
                    institution=name, data_path=path, node_config={"state-dir": str(tmp_path / name)}, wait=False
                )
                for name, path in zip(("hospital-1", "hospital-2"), split.hospital_paths, strict=False)
            ]
            hospitals = fed.wait_for_nodes(hospitals)
            # An unknown key is refused at activation for `refusal_patience` (a crashed session of a known key is
            # refused the same way for up to 20 s), then the node stops, naming the revocation.
            assert _wait_exit(stranger) == NODE_REFUSED_EXIT
            assert "[code: 2004] Failed to activate SuperNode" in stranger.log_tail(40)
            assert "REVOKED" in stranger.log_tail(40)
            token_file = tmp_path / "aggregator-token"
            token_file.write_text(admin.create_aggregator_token("registration-test"))
            run_id = fed.submit(
                app_dir=APP_DIR,
                run_config={
                    "num-rounds": 2,
                    "schema-path": str(split.schema_path),
                    "results-dir": str(tmp_path / "runs"),
                    "min-nodes": 2,
                    "budget-url": url,
                    "budget-token-file": str(token_file),
                },
            )
            assert wait_finished(fed, run_id) == "finished:completed"
            trained = time.monotonic()

            with BudgetConnection(url, institution_token, retries=0) as own:
                assert set(own.budgets()) == {"hospital-2"}  # the kit's token works, for its own budget only
            log_before = hospitals[1].log_path.stat().st_size
            report = revoke_institution(fed_dir, "hospital-2", superlink=fed.connection, budget=budget)
            assert report.record.superlink == "revoked" and report.record.budget == "revoked", report
            _wait_cut_off(hospitals[1], after=log_before)  # the SuperLink dropped it; its reconnections fail
            revoked_at = time.monotonic()
            assert _wait_exit(hospitals[1], timeout=30) == NODE_REFUSED_EXIT  # it stops instead of retrying forever
            tail = hospitals[1].log_tail(40)
            assert "this node was REVOKED" in tail and f"exit code {NODE_REFUSED_EXIT}" in tail, tail
            print(f"\nthe revoked node stopped {time.monotonic() - revoked_at:.1f} s after it was cut off")
            assert hospitals[0].popen.poll() is None
            online = {
                n["node-id"] for n in fed.flwr("supernode", "list", "fedcare")["nodes"] if n["status"] == "online"
            }
            assert str(records["hospital-1"].node_id) in online and str(records["hospital-2"].node_id) not in online
            with (
                BudgetConnection(url, institution_token, retries=0) as revoked,
                pytest.raises(BudgetAuthError) as refused,
            ):
                revoked.budgets()
            assert refused.value.status_code == 401
    assert_all_exited(fed.seen_pids)
    results = json.loads((tmp_path / "runs" / str(run_id) / "results.json").read_text())
    assert [r["participants"] for r in results["rounds"]] == [["hospital-1", "hospital-2"]] * 2
    print(f"\ntrained in {trained - started:.1f} s, revoked in {time.monotonic() - trained:.1f} s")
