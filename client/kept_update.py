"""The last update this hospital trained, kept so that a resumed run never charges one round twice.

A round's DP spending is committed before training (`client.accountant_state`). When the coordinator
crashes after this hospital trained round r and before it checkpointed round r, the resumed run asks for
round r again (same fedcare run id, docs/resume.md). Training it anew would release a second noisy
update for one charge; charging again would count one round twice. So the update is kept on the
hospital's own disk, beside its accountant, before it leaves the node, and is sent again when the same
(run, round) comes back: the same release, nothing new spent. If none was kept, none left the node (the
hospital stopped while training), so the round is trained under the spending already recorded.

Only the last round is kept: the server checkpoints every round, so only the round in flight at a crash
can come back.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from client.training import TrainingOutcome
from common.atomic import write_json_atomic
from common.codecs import InvalidUpdate, weights_from_bytes, weights_to_bytes

KEPT_FILE = "last-update.json"
FORMAT = "fedcare-kept-update/1"


@dataclass(frozen=True)
class KeptUpdate:
    run_id: int
    server_round: int
    weights: OrderedDict[str, np.ndarray]
    outcome: TrainingOutcome


def keep_update(state_dir: Path, kept: KeptUpdate) -> None:
    """Write `kept` durably; call it before the update leaves the node."""
    write_json_atomic(
        Path(state_dir) / KEPT_FILE,
        {
            "format": FORMAT,
            "run_id": str(kept.run_id),
            "server_round": kept.server_round,
            "outcome": asdict(kept.outcome),
            "weights": base64.b64encode(weights_to_bytes(kept.weights)).decode(),
        },
    )


def kept_update(state_dir: Path, *, run_id: int, server_round: int) -> KeptUpdate | None:
    """The update kept for (`run_id`, `server_round`), or None when none was (or the file is unusable)."""
    path = Path(state_dir) / KEPT_FILE
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("run_id") != str(run_id) or raw.get("server_round") != server_round:
            return None
        weights = weights_from_bytes(base64.b64decode(raw["weights"], validate=True))
        return KeptUpdate(run_id, server_round, weights, TrainingOutcome(**raw["outcome"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, InvalidUpdate):
        # Unusable: treated as never kept, so the round is trained again under the recorded spending.
        return None
