"""What int8 on the wire saves and costs: bytes per round and final accuracy, int8 against float32.

Breast cancer (MLP) and digits (CNN), 3 hospitals, DP on (each hospital targets epsilon 3 for the run),
plain mode, the run config's defaults otherwise (5 rounds, 2 local epochs). Each (data set, compression)
pair runs --repeats times, alternating, and the final model is scored on the held-out rows no hospital
holds. DP noise and sampling come from OS entropy, so runs are not paired: the accuracy change is
reported as a difference of means with its standard error. With --no-dp, local training is seeded by
the run config, so a float32 run and an int8 run differ only by the quantization (and its random
rounding): the accuracy change is then int8's own.

The rounds run in this process through `tests/server/loopback.py` (the production ServerApp round code
and ClientApp handlers, messages handed over without a SuperLink): the bytes are counted by the same
`common.wire_bytes.content_bytes` as results.json, and a SuperLink would change neither bytes nor
accuracy, only add minutes per run on this shared machine.

Then the exported model (`fedcare model export --int8`) of the last float32 run per data set: file size
and held-out accuracy against float32 TorchScript.

    python bench/compression.py            # --repeats 3 (default), --datasets breast-cancer digits, --no-dp

Prints a JSON object, writes bench/out/compression.json (compression-no-dp.json), and a Markdown table
on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/compression.py` from a checkout

import torch  # noqa: E402
from flwr.app import ArrayRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from client.training import evaluate  # noqa: E402
from common.codecs import save_weights, to_numpy  # noqa: E402
from common.data import load_hospital_table  # noqa: E402
from common.demo_data import write_demo_split  # noqa: E402
from common.int8_wire import FLAT_RECORD, INT8_RECORD, to_flat_record, to_int8_record  # noqa: E402
from common.models import build_model  # noqa: E402
from common.schema import load_schema  # noqa: E402
from common.settings import RunSettings  # noqa: E402
from common.wire_bytes import content_bytes  # noqa: E402
from fedcare.model_export import export_model  # noqa: E402
from server.rounds import PlainRounds, RoundContext  # noqa: E402
from tests.server.loopback import RUN, LoopbackGrid  # noqa: E402


def one_run(*, dataset: str, compression: str, root: Path, dp: bool) -> dict[str, Any]:
    split = write_demo_split(root / "data", dataset=dataset, hospitals=3)  # type: ignore[arg-type]
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(root / f"state-{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate(
        {"schema-path": str(split.schema_path), "update-compression": compression, "min-nodes": 3, "dp": dp}
    )
    schema = load_schema(split.schema_path)
    (root / "run" / "models").mkdir(parents=True)
    ctx = RoundContext(grid=LoopbackGrid(hospitals), settings=settings, schema=schema, run_dir=root / "run")  # type: ignore[arg-type]
    rounds = PlainRounds(ctx, to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict())))
    up, down, started = [], [], time.monotonic()
    for server_round in range(1, settings.num_rounds + 1):
        outcome = rounds.train(nodes=[1, 2, 3], server_round=server_round)
        if not outcome.aggregated:
            raise RuntimeError(f"round {server_round} failed: {outcome.reason}; {outcome.replies.rejections}")
        up.append(sum(outcome.replies.bytes_up.values()) / len(outcome.replies.bytes_up))
        down.append(outcome.replies.bytes_down)
    model = build_model(schema)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in rounds.weights.items()})
    holdout = load_hospital_table(split.holdout_path, schema)
    save_weights(rounds.weights, root / "run" / "final_model.pt")
    return {
        "bytes_up_per_hospital": statistics.mean(up),
        "bytes_down_per_hospital": statistics.mean(down),
        "accuracy": evaluate(model, holdout, device=torch.device("cpu")).accuracy,
        "holdout_rows": len(holdout),
        "seconds": round(time.monotonic() - started, 1),
        "run_dir": root / "run",
        "holdout": split.holdout_path,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["accuracy"] for r in runs]
    return {
        "bytes_up_per_hospital": statistics.mean(r["bytes_up_per_hospital"] for r in runs),
        "bytes_down_per_hospital": statistics.mean(r["bytes_down_per_hospital"] for r in runs),
        "accuracy_mean": statistics.mean(acc),
        "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
        "accuracies": acc,
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["breast-cancer", "digits"])
    parser.add_argument(
        "--no-dp", dest="dp", action="store_false", help="DP off: training is seeded, so runs pair up exactly"
    )
    args = parser.parse_args()
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, RUN, 0  # as a ServerApp process has
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_start": os.getloadavg(),
        "repeats": args.repeats,
        "setup": f"3 hospitals, DP {'on (target epsilon 3 per run)' if args.dp else 'off'}, plain mode, 5 rounds, "
        "2 local epochs",
        "datasets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            runs: dict[str, list[dict[str, Any]]] = {"none": [], "int8": []}
            for i in range(args.repeats):
                for compression in ("none", "int8"):
                    run = one_run(
                        dataset=dataset,
                        compression=compression,
                        root=Path(tmp) / f"{dataset}-{compression}-{i}",
                        dp=args.dp,
                    )
                    runs[compression].append(run)
                    print(f"{dataset} {compression} #{i}: {run['accuracy']:.4f} in {run['seconds']} s", file=sys.stderr)
            floats, int8 = _summary(runs["none"]), _summary(runs["int8"])
            sd = [s["accuracy_sd"] for s in (floats, int8)]
            last = runs["none"][-1]
            weights = to_numpy(
                ArrayRecord(build_model(load_schema(last["holdout"].parent / "schema.json")).state_dict())
            )
            record_floats = content_bytes(RecordDict({FLAT_RECORD: to_flat_record(weights)}))  # as float32 travels
            record_int8 = content_bytes(RecordDict({INT8_RECORD: to_int8_record(weights)}))
            exported = export_model(last["run_dir"], int8=True, data=last["holdout"])
            report["datasets"][dataset] = {
                "float32": floats,
                "int8": int8,
                "weights_record_bytes": {"float32": record_floats, "int8": record_int8},
                "weights_record_ratio": record_int8 / record_floats,
                "bytes_up_ratio": int8["bytes_up_per_hospital"] / floats["bytes_up_per_hospital"],
                "bytes_down_ratio": int8["bytes_down_per_hospital"] / floats["bytes_down_per_hospital"],
                "accuracy_change_points": 100 * (int8["accuracy_mean"] - floats["accuracy_mean"]),
                "accuracy_change_stderr_points": (
                    100 * ((sd[0] ** 2 + sd[1] ** 2) / args.repeats) ** 0.5 if None not in sd else None
                ),
                "holdout_rows": last["holdout_rows"],
                "export": {
                    "int8_bytes": exported.size,
                    "float32_torchscript_bytes": exported.float32_size,
                    "float32_state_dict_bytes": exported.state_dict_size,
                    "int8_accuracy": exported.accuracy,
                    "float32_accuracy": exported.float32_accuracy,
                },
            }
    report["load_average_end"] = os.getloadavg()
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"compression{'' if args.dp else '-no-dp'}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    lines = [
        "| data set | weights record int8/f32 | bytes up int8/f32 | bytes down int8/f32 | accuracy f32 | accuracy int8 "
        "| change (pts) |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, d in report["datasets"].items():
        lines.append(
            f"| {name} | {d['weights_record_ratio']:.3f} | {d['bytes_up_ratio']:.3f} | {d['bytes_down_ratio']:.3f} "
            f"| {d['float32']['accuracy_mean']:.4f} | {d['int8']['accuracy_mean']:.4f} "
            f"| {d['accuracy_change_points']:+.2f} |"
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
