"""Submit a run to the compose federation and (optionally) follow it: the `submit` service's command.

Runs inside the stack's network (service names resolve), as the same uid as the ServerApp runner and on
its volume, so it can hand the ServerApp a fresh aggregator token for the budget service and read the
run's results.json back. Prints one JSON object on stdout: run id, Flower status, results.

    docker compose run --rm submit --rounds 2 --wait
    docker compose run --rm submit --resume RUN_ID --wait   # after a SuperLink or ServerApp crash (docs/resume.md)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

APP_DIR = Path("/opt/fedcare/app")
CONNECTION = "fedcare"


def log(message: str) -> None:
    print(f"submit: {message}", file=sys.stderr, flush=True)


def write_connection(*, superlink: str, ca_certificate: Path) -> None:
    home = Path(os.environ.get("FLWR_HOME", "/var/lib/fedcare/flwr"))
    home.mkdir(parents=True, exist_ok=True)
    connection = {"address": superlink, "root-certificates": str(ca_certificate)}
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))


def flwr(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    done = subprocess.run(["flwr", *args, "--format", "json"], capture_output=True, text=True, timeout=timeout)
    try:
        answer = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise SystemExit(
            f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): {done.stdout}{done.stderr}"
        ) from None
    if not answer.get("success", False):
        raise SystemExit(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
    return answer


def aggregator_token_file(budget_url: str, token_dir: Path, *, ca_certificate: Path | None = None) -> Path:
    """Mint an aggregator token with the admin token and leave it (0600) where the ServerApp runner reads it.

    An https budget service is verified against `ca_certificate` (the federation CA) only."""
    from server.budget_client.admin import BudgetAdmin

    admin_token = os.environ.get("FEDCARE_ADMIN_TOKEN", "")
    if not admin_token:
        raise SystemExit("budget service given but no admin token: set FEDCARE_ADMIN_TOKEN_FILE (compose does)")
    with BudgetAdmin(budget_url, admin_token, ca_certificate=ca_certificate) as admin:
        token = admin.create_aggregator_token(f"compose-serverapp-{time.strftime('%Y%m%dT%H%M%S')}")
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = token_dir / "aggregator-token"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced


def run_status(run_id: int) -> str:
    runs = flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"]
    return str(runs[0]["status"]) if runs else "unknown"


def follow(run_id: int, results_path: Path, *, timeout: float) -> str:
    """Wait until Flower reports the run finished. results.json (a file read) shows progress; `flwr ls` (a whole
    Python process) is asked only every 15 s, or once results.json says the ServerApp is done."""
    deadline = time.monotonic() + timeout
    next_ask, reported = 0.0, -1
    while time.monotonic() < deadline:
        results = read_json(results_path) or {}
        rounds = len(results.get("rounds", []))
        if rounds != reported:
            log(f"run {run_id}: {rounds} round(s) done")
            reported = rounds
        if results.get("status") in ("completed", "failed") or time.monotonic() >= next_ask:
            status = run_status(run_id)
            if status.startswith("finished"):
                return status
            next_ask = time.monotonic() + 15.0
        time.sleep(2.0)
    status = run_status(run_id)
    log(f"run {run_id} did not finish within {timeout:.0f} s (status {status})")
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superlink", default=os.environ.get("FEDCARE_SUPERLINK_CONTROL", "superlink:8000"))
    parser.add_argument(
        "--ca-certificate", type=Path, default=Path(os.environ.get("FEDCARE_CA_CERTIFICATE", "/run/fedcare/ca.crt"))
    )
    parser.add_argument("--budget-url", default=os.environ.get("FEDCARE_BUDGET_URL", ""))
    parser.add_argument(
        "--budget-ca-file",
        default=os.environ.get("FEDCARE_BUDGET_CA_FILE", ""),
        help="an https budget URL: the federation CA as the ServerApp runner sees it (default: --ca-certificate)",
    )
    parser.add_argument(
        "--schema-path",
        default=os.environ.get("FEDCARE_SCHEMA_PATH", "/run/fedcare/schema.json"),
        help="the schema as the ServerApp runner sees it",
    )
    parser.add_argument("--results-dir", default="/var/lib/fedcare/runs", help="on the ServerApp runner's volume")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-nodes", type=int, default=3)
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key (TOML value), repeatable",
    )
    parser.add_argument(
        "--he",
        action="store_true",
        help="privacy-mode he: the ServerApp adds CKKS ciphertexts with the key-free context in server/",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="go on with run RUN_ID (under --results-dir) from its last checkpoint, with its own run config",
    )
    parser.add_argument("--wait", action="store_true", help="follow the run until Flower reports it finished")
    parser.add_argument("--timeout", type=float, default=1800.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    import tomllib

    args = parse_args(argv)
    write_connection(superlink=args.superlink, ca_certificate=args.ca_certificate)
    run_config: dict[str, Any] = {
        "num-rounds": args.rounds,
        "min-nodes": args.min_nodes,
        "schema-path": args.schema_path,
        "results-dir": args.results_dir,
    }
    if args.he:
        run_config |= {"privacy-mode": "he", "he-public-context": str(Path(args.schema_path).parent / "he-public.ctx")}
    for item in args.run_config:
        run_config |= tomllib.loads(item.replace("=", " = ", 1))
    results_id = None
    if args.resume:  # the same run config as the first submission, plus the run to resume
        from server.checkpoint import CheckpointError, plan_resume

        try:
            plan = plan_resume(Path(args.results_dir) / args.resume)
        except CheckpointError as exc:
            raise SystemExit(f"cannot resume: {exc}") from None
        run_config, results_id = dict(plan.run_config), plan.run_id
        log(f"resuming run {plan.run_id} from round {plan.from_round} of {plan.num_rounds}")
    if args.budget_url:
        tls = args.budget_url.startswith("https://")
        token_file = aggregator_token_file(
            args.budget_url, Path("/var/lib/fedcare/tokens"), ca_certificate=args.ca_certificate if tls else None
        )
        run_config["budget-url"] = args.budget_url
        run_config["budget-token-file"] = str(token_file)
        if tls:
            run_config["budget-ca-file"] = args.budget_ca_file or str(args.ca_certificate)
    config_path = Path(os.environ.get("HOME", "/tmp")) / f"run-config-{time.time_ns()}.toml"
    config_path.write_text(tomli_w.dumps(run_config))
    run_id = int(flwr("run", str(APP_DIR), CONNECTION, "--run-config", str(config_path))["run-id"])
    results_id = results_id or str(run_id)  # a resumed run keeps its first id and directory
    log(f"run {run_id} submitted; results: {args.results_dir}/{results_id}/results.json")
    outcome: dict[str, Any] = {"run_id": run_id, "status": "submitted"}
    if args.resume:
        outcome["resumes"] = results_id
    if args.wait:
        results_path = Path(args.results_dir) / results_id / "results.json"
        outcome["status"] = follow(run_id, results_path, timeout=args.timeout)
        outcome["results"] = read_json(results_path)
    print(json.dumps(outcome))
    return 0 if outcome["status"] in ("submitted", "finished:completed") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
