"""The ServerApp's round checkpoint: what a resumed run needs to go on after the last round accounted for.

Written after every round (aggregated or failed) and once before the first: the round number, the
privacy mode's state (`Rounds.state()`: the global model, in HE mode the encrypted sums, any
optimizer or liveness state), results.json's content so far, and the DP events the budget service
has not acknowledged yet. Byte values of the mode's state go to files of their own under
`checkpoint/`, named by round and kind (`.he` ciphertexts, `.npz` weights); `checkpoint.json` is
written last and atomically, so its rename is the commit: a crash at any moment leaves the previous
checkpoint whole, never a mix of two.

A checkpoint never holds a secret: in HE mode the sums are ciphertexts the server cannot read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.atomic import write_bytes_atomic, write_json_atomic

FORMAT = "fedcare-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.json"
BLOB_DIR = "checkpoint"
RUN_CONFIG_FILE = "run-config.json"  # the run config of the first submission: a resume reuses it


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume; the message says what is wrong and what to do."""


@dataclass
class Checkpoint:
    run_id: str  # the fedcare run id: the Flower run id of the run's first submission (docs/resume.md)
    completed_round: int  # rounds 1..completed_round are aggregated or failed, and in `results`
    scored_round: int  # the last aggregated round (0: none); the hospitals score its model next
    model_path: str | None  # that round's saved model
    rounds: dict[str, Any]  # the privacy mode's `Rounds.state()`; byte values live in files under checkpoint/
    results: dict[str, Any]  # results.json's content as of `completed_round`
    outbox: list[dict[str, Any]] = field(default_factory=list)  # DP events not yet acknowledged by the ledger
    gate: dict[str, Any] = field(default_factory=dict)  # the budget gate's state (node id -> institution)
    written_at: str = ""


def write_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` under `run_dir`; returns checkpoint.json's path. Files of older rounds are removed after."""
    blobs = run_dir / BLOB_DIR
    state: dict[str, Any] = {}
    for key, value in checkpoint.rounds.items():
        if isinstance(value, bytes):
            name = f"round-{checkpoint.completed_round}-{key}{_suffix(value)}"
            write_bytes_atomic(blobs / name, value)
            state[key] = {"file": name, "bytes": len(value)}
        else:
            state[key] = {"value": value}
    payload = asdict(checkpoint) | {
        "format": FORMAT,
        "rounds": state,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = run_dir / CHECKPOINT_FILE
    write_json_atomic(path, payload)
    keep = {entry["file"] for entry in state.values() if "file" in entry}
    for old in blobs.glob("round-*") if blobs.exists() else []:
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return path


def _suffix(blob: bytes) -> str:
    """Name a file for what it holds: `.he` for ciphertexts (like the HE models beside it), `.npz` for weights."""
    if blob.startswith(b"FCHE1\n"):  # common.he.wire.EncryptedUpdate.to_bytes
        return ".he"
    return ".npz" if blob.startswith(b"PK") else ".bin"


def read_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The last checkpoint written under `run_dir`, or None when there is none."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); the run cannot be resumed from it") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedcare checkpoint (expected format {FORMAT!r})")
    rounds: dict[str, Any] = {}
    for key, entry in dict(raw.get("rounds") or {}).items():
        if "file" in entry:
            blob = run_dir / BLOB_DIR / str(entry["file"])
            try:
                data = blob.read_bytes()
            except OSError as exc:
                raise CheckpointError(f"{path}: its file {blob} is missing ({exc})") from exc
            if len(data) != entry.get("bytes"):
                raise CheckpointError(f"{blob} holds {len(data)} bytes, the checkpoint says {entry.get('bytes')}")
            rounds[key] = data
        else:
            rounds[key] = entry.get("value")
    try:
        return Checkpoint(
            run_id=str(raw["run_id"]),
            completed_round=int(raw["completed_round"]),
            scored_round=int(raw["scored_round"]),
            model_path=raw.get("model_path"),
            rounds=rounds,
            results=dict(raw["results"]),
            outbox=list(raw.get("outbox") or []),
            gate=dict(raw.get("gate") or {}),
            written_at=str(raw.get("written_at", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} lacks a field or has a wrong one: {exc!r}") from exc


@dataclass(frozen=True)
class ResumePlan:
    """What `fedcare run resume` will do for one run directory."""

    run_dir: Path
    run_id: str  # the fedcare run id the resumed run keeps
    from_round: int  # the first round the resumed run plays
    num_rounds: int
    run_config: dict[str, Any]  # the original run config, plus `fedcare-run-id`


def plan_resume(run_dir: Path) -> ResumePlan:
    """Decide whether and from which round the run in `run_dir` can resume; raises CheckpointError saying why not."""
    run_dir = Path(run_dir)
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(
            f"{run_dir} holds no {RUN_CONFIG_FILE}: not a fedcare run directory (RESULTS_DIR/<run id>), or its "
            "ServerApp never started; submit the run again instead"
        )
    checkpoint = read_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} holds no {CHECKPOINT_FILE}: its ServerApp never started; submit it again")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is unreadable ({exc}); the run config cannot be reused") from exc
    results = checkpoint.results
    status = _results_status(run_dir)
    num_rounds = int(results.get("num_rounds", 0))
    if status == "completed":
        raise CheckpointError(f"run {checkpoint.run_id} completed already ({run_dir}/results.json); nothing to resume")
    return ResumePlan(
        run_dir=run_dir,
        run_id=checkpoint.run_id,
        from_round=checkpoint.completed_round + 1,
        num_rounds=num_rounds,
        run_config={**config, "fedcare-run-id": checkpoint.run_id},
    )


def _results_status(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / "results.json").read_text()).get("status"))
    except (OSError, ValueError):
        return None
