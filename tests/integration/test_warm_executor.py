"""The warm executor across real processes: it serves ClientApp messages from forked children, and a
child that crashes, segfaults, hangs or raises takes down only itself, with a reply that says why.

A SuperLink (TLS, node authentication) and one hospital started with `fedcare node start` (conftest's
`warm_hospital`, which test_warm_dp's killed child uses too); the run is a small Flower app
(tests/integration/faulty_app) whose ClientApp misbehaves on request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import WARM_MESSAGE_TIMEOUT, WarmHospital, wait_finished

pytestmark = pytest.mark.slow
FAULTY_APP = Path(__file__).resolve().parent / "faulty_app"
TIMEOUT = WARM_MESSAGE_TIMEOUT  # the node's --message-timeout: the hanging ClientApp is killed after this


def test_crashing_and_hanging_clientapps_get_error_replies_and_the_executor_keeps_serving(
    tmp_path: Path, warm_hospital: WarmHospital
) -> None:
    """Every process the federation started is gone once it stopped: the fixture checks that."""
    behaviours = ["ok", "crash", "ok", "segfault", "hang", "raise", "ok"]
    results = tmp_path / "answers.json"
    fed, since = warm_hospital.fed, warm_hospital.log_size()  # this test's part of the node's log
    run_id = fed.submit(app_dir=FAULTY_APP, run_config={"behaviours": ",".join(behaviours), "results": str(results)})
    assert wait_finished(fed, run_id, timeout=300) == "finished:completed"
    fed.remember_children()
    log = warm_hospital.log_since(since)

    answers = json.loads(results.read_text())
    assert [a["behaviour"] for a in answers] == behaviours, answers
    by_kind = {a["behaviour"]: a for a in answers}
    oks = [a for a in answers if a["behaviour"] == "ok"]
    assert all("error" not in a for a in oks), oks
    assert len({a["pid"] for a in oks}) == 3, "each message runs in its own child"
    assert len({a["ppid"] for a in oks}) == 1, "every child comes from the one warm executor"
    assert "exited with code 3 without replying" in by_kind["crash"]["error"]
    assert "killed by SIGSEGV without replying" in by_kind["segfault"]["error"]
    assert f"did not finish within {TIMEOUT:g} s and was killed" in by_kind["hang"]["error"]
    assert TIMEOUT <= by_kind["hang"]["seconds"] < TIMEOUT + 30
    assert "the ClientApp raised on purpose" in by_kind["raise"]["error"]  # Flower's own error reply
    for reason in ("exited with code 3", "killed by SIGSEGV", "did not finish within"):
        assert reason in log, f"the executor's log does not say '{reason}'"
    # A message that is served by a warm child costs far less than a fresh `flwr-clientapp` (2-4 s).
    print("\nseconds per message:", {a["behaviour"]: round(a["seconds"], 2) for a in answers})
