"""What HE mode costs per round, against plaintext FedAvg of the same updates.

For models of 100k and 1M float32 parameters and federations of 3 and 10 hospitals:

- hospital: encrypt one update (`common.he.hospital.encrypt_update`: flatten, multiply by the sample count,
  CKKS-encrypt, serialize), and decrypt the sum (`decrypt_sum`: decrypt, check, divide, reshape);
- server: check and add every hospital's update (`server.he_aggregate.HEAggregator.add`, which
  deserializes and adds one hospital at a time) and serialize the sum (`result`), against
  `server.fedavg.fedavg` on the plaintext updates;
- bytes one hospital sends (ciphertexts, header, digest) against the float32 update;
- the cost of putting the bundle into a Flower message and deflating it as the SuperNode does,
  against the same for the plaintext ArrayRecord;
- the largest |HE FedAvg - plaintext FedAvg|;
- the server's peak memory for 3 and 10 hospitals of the 1M model, in a fresh process that
  receives the updates one at a time.

Every hospital's update is encrypted separately (no ciphertext reuse). Each configuration is timed
--repeats times and medians are reported; times are wall-clock and process CPU seconds (TenSEAL
is single-threaded and holds the GIL, so on an idle machine they agree).

Then whole rounds of a real federation (SuperLink, 3 SuperNodes, TLS, DP on) with a 100k-parameter
model, HE against plain mode, alternating in one federation: `federation_rounds` below.

    python bench/he_overhead.py            # about 5 minutes; --repeats 3, --no-flare-like, --no-federation

Prints a JSON object, writes bench/out/he_overhead.json, and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/he_overhead.py` from a checkout

import numpy as np  # noqa: E402
import tenseal as ts  # noqa: E402
from flwr.app import ArrayRecord, RecordDict  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402

from common.codecs import from_numpy  # noqa: E402
from common.he.hospital import decrypt_sum, encrypt_update  # noqa: E402
from common.he.keys import make_keys  # noqa: E402
from common.he.params import HEParams  # noqa: E402
from common.he.wire import put_bundle  # noqa: E402
from server.fedavg import ClientUpdate, fedavg  # noqa: E402
from server.he_aggregate import HEAggregator  # noqa: E402

OUT = REPO / "bench" / "out" / "he_overhead.json"
SIZES = (100_000, 1_000_000)
CLIENTS = (3, 10)
GOAL_EXPANSION = 8.5  # the issue: ciphertext at most 8.5x plaintext bytes (FLARE: 14.4x)
FLARE_LIKE = HEParams(8192, (60, 40, 40), 40)  # FLARE's default context, for the expansion comparison


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process; unlike ru_maxrss, VmHWM starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_memory(*, values: int, clients: tuple[int, ...]) -> list[dict[str, Any]]:
    """Peak RSS of a fresh process that aggregates N hospitals' updates arriving one at a time.

    Updates are written to files and the child reads one, adds it and drops it, as the ServerApp
    does with one reply after another; the peak should not grow with N.
    """
    import subprocess
    import tempfile

    secret, server = make_keys()
    ctx = ts.context_from(secret)
    rng = np.random.default_rng(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="he-bench-") as tmp:
        (Path(tmp) / "server.ctx").write_bytes(server)
        for i in range(max(clients)):
            bundle = encrypt_update(model(values, rng), num_examples=100, context=ctx, run_id=1, server_round=1)
            (Path(tmp) / f"update-{i}.he").write_bytes(bundle.to_bytes())
        for n in clients:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", tmp, str(n), str(values)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"values": values, "clients": n, **json.loads(out.stdout), "update_bytes": bundle.nbytes})
    return rows


def _memory_child(tmp: str, clients: int, values: int) -> None:
    from common.he.wire import EncryptedUpdate

    server = (Path(tmp) / "server.ctx").read_bytes()
    agg = HEAggregator(server, expected_values=values, run_id=1, server_round=1)
    before = _status_mb("VmRSS")
    for i in range(clients):
        agg.add(EncryptedUpdate.from_bytes((Path(tmp) / f"update-{i}.he").read_bytes()), institution=f"h{i}")
    agg.result()
    peak = _status_mb("VmHWM")
    print(
        json.dumps(
            {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1), "growth_mb": round(peak - before, 1)}
        )
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _deflated_bytes(content: RecordDict) -> int:
    """Deflate every object of a message the way Flower 1.39 does before pushing it to the SuperLink."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def model(values: int, rng: np.random.Generator) -> OrderedDict[str, np.ndarray]:
    """Three tensors, `values` float32 values in all, of the magnitude of a trained network's weights."""
    a = values // 2
    return OrderedDict(
        w1=rng.normal(0, 0.1, a).astype(np.float32),
        w2=rng.normal(0, 0.1, values - a - 1000).astype(np.float32),
        bias=rng.normal(0, 0.1, 1000).astype(np.float32),
    )


def run_config(*, values: int, clients: int, params: HEParams, repeats: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    updates = [model(values, rng) for _ in range(clients)]
    counts = [int(c) for c in rng.integers(50, 500, clients)]
    secret, server = make_keys(params)
    ctx = ts.context_from(secret)
    warm = encrypt_update(
        OrderedDict(w=np.zeros(10, np.float32)), num_examples=1, context=ctx, run_id=1, server_round=0
    )
    HEAggregator(server, expected_values=10, run_id=1, server_round=0).add(warm, institution="warm-up")
    plain_bytes = sum(w.nbytes for w in updates[0].values())
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "encrypt_s",
            "encrypt_cpu_s",
            "server_add_s",
            "server_add_cpu_s",
            "server_result_s",
            "decrypt_s",
            "decrypt_cpu_s",
            "plain_fedavg_s",
            "he_message_s",
            "plain_message_s",
        )
    }
    for rep in range(repeats):
        bundles = []
        for w, n in zip(updates, counts, strict=True):
            bundle, wall, cpu = _timed(
                lambda: encrypt_update(w, num_examples=n, context=ctx, run_id=1, server_round=rep + 1)
            )
            bundles.append(bundle)
            samples["encrypt_s"].append(wall)
            samples["encrypt_cpu_s"].append(cpu)
        # Client side, building the reply message: HE bundle vs plaintext ArrayRecord.
        he_content, plain_content = RecordDict(), RecordDict()
        _, wall, _ = _timed(lambda: (put_bundle(he_content, bundles[0]), _deflated_bytes(he_content)))
        samples["he_message_s"].append(wall)
        _, wall, _ = _timed(
            lambda: (plain_content.__setitem__("arrays", from_numpy(updates[0])), _deflated_bytes(plain_content))
        )
        samples["plain_message_s"].append(wall)
        assert isinstance(plain_content["arrays"], ArrayRecord)

        agg = HEAggregator(server, expected_values=values, run_id=1, server_round=rep + 1)
        w0, c0 = time.perf_counter(), time.process_time()
        for i, bundle in enumerate(bundles):
            agg.add(bundle, institution=f"hospital-{i}")
        samples["server_add_s"].append(time.perf_counter() - w0)
        samples["server_add_cpu_s"].append(time.process_time() - c0)
        (total_bundle, _), wall, _ = _timed(agg.result)
        samples["server_result_s"].append(wall)

        averaged, wall, cpu = _timed(lambda: decrypt_sum(total_bundle, context=ctx, template=updates[0]))
        samples["decrypt_s"].append(wall)
        samples["decrypt_cpu_s"].append(cpu)
        plain, wall, _ = _timed(
            lambda: fedavg(
                [ClientUpdate(f"h{i}", i, w, n) for i, (w, n) in enumerate(zip(updates, counts, strict=False))]
            )
        )
        samples["plain_fedavg_s"].append(wall)
        error = max(float(np.abs(averaged[k].astype(np.float64) - plain[k].astype(np.float64)).max()) for k in plain)

    med = {k: statistics.median(v) for k, v in samples.items()}
    bytes_per_client = max(agg.bytes_received.values())
    server_he = med["server_add_s"] + med["server_result_s"]
    return {
        "values": values,
        "clients": clients,
        "params": params.to_dict(),
        "repeats": repeats,
        "encrypt_s_per_client": round(med["encrypt_s"], 4),
        "encrypt_cpu_s_per_client": round(med["encrypt_cpu_s"], 4),
        "encrypt_values_per_s": round(values / med["encrypt_s"]),
        "encrypt_values_per_cpu_s": round(values / med["encrypt_cpu_s"]),
        "server_add_s_all_clients": round(med["server_add_s"], 4),
        "server_add_cpu_s_all_clients": round(med["server_add_cpu_s"], 4),
        "server_add_s_per_client": round(med["server_add_s"] / clients, 4),
        "server_result_s": round(med["server_result_s"], 4),
        "decrypt_s": round(med["decrypt_s"], 4),
        "decrypt_cpu_s": round(med["decrypt_cpu_s"], 4),
        "plain_fedavg_s": round(med["plain_fedavg_s"], 4),
        "server_he_over_plain": round(server_he / med["plain_fedavg_s"], 2),
        "he_compute_added_per_round_s": round(
            med["encrypt_s"] + server_he + med["decrypt_s"] - med["plain_fedavg_s"], 4
        ),
        "bytes_per_client": bytes_per_client,
        "plain_bytes_per_client": plain_bytes,
        "expansion": round(bytes_per_client / plain_bytes, 3),
        "sum_bytes": total_bundle.nbytes,
        "he_message_build_s": round(med["he_message_s"], 4),
        "plain_message_build_s": round(med["plain_message_s"], 4),
        "max_abs_error_vs_plain_fedavg": error,
        "samples": {k: [round(x, 5) for x in v] for k, v in samples.items()},
    }


FEDERATION_HIDDEN_UNITS = 420  # the breast-cancer MLP at this width has 101,852 parameters: the 100k model


def federation_rounds(*, rounds: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """Seconds per round of a 3-hospital federation (real SuperLink and SuperNodes, TLS, DP on), HE
    against plain mode, runs alternating in one federation so both see the same machine load.

    The model is the demo's breast-cancer MLP widened to about 100k parameters. Seconds per round
    is Flower's elapsed run time (ServerApp start to finish, including the closing evaluate
    message) divided by the rounds.
    """
    from common.demo_data import write_demo_split
    from common.he.keys import write_keys
    from common.models import build_model, parameter_count
    from common.schema import load_schema, save_schema
    from fedcare.federation import LocalFederation

    split = write_demo_split(workdir / "data", dataset="breast-cancer", hospitals=3)
    schema = load_schema(split.schema_path).model_copy(update={"hidden_units": FEDERATION_HIDDEN_UNITS})
    save_schema(schema, split.schema_path)
    params = parameter_count(build_model(schema))
    keys = write_keys(workdir / "he", overwrite=True)
    base = {
        "num-rounds": rounds,
        "schema-path": str(split.schema_path),
        "results-dir": str(workdir / "runs"),
        "min-nodes": 3,
    }
    modes = {"plain": base, "he": {**base, "privacy-mode": "he", "he-public-context": str(keys.server_context)}}
    timings: dict[str, list[float]] = {"plain": [], "he": []}
    bytes_sent: dict[str, list[int]] = {"plain": [], "he": []}
    with LocalFederation(workdir / "fed") as fed:
        fed.start_superlink()
        for i, path in enumerate(split.hospital_paths, start=1):
            fed.add_hospital(
                institution=f"hospital-{i}",
                data_path=path,
                node_config={"he-secret-context": str(keys.hospital_context), "state-dir": str(workdir / f"state-{i}")},
            )
        for repeat in range(repeats):
            for mode in ("plain", "he") if repeat % 2 == 0 else ("he", "plain"):
                run_id = fed.submit(app_dir=REPO, run_config=modes[mode])
                while not (info := fed.run_info(run_id))["status"].startswith("finished"):
                    time.sleep(1.0)
                results = json.loads((workdir / "runs" / str(run_id) / "results.json").read_text())
                if info["status"] != "finished:completed" or any(
                    r["status"] != "aggregated" for r in results["rounds"]
                ):
                    raise RuntimeError(
                        f"{mode} run {run_id} ended {info['status']}; see {workdir / 'runs' / str(run_id)}"
                    )
                timings[mode].append(float(info["elapsed"]) / rounds)
                bytes_sent[mode] += [n for r in results["rounds"] for n in r.get("bytes_sent", {}).values()]
                print(f"federation: {mode} run {run_id}: {timings[mode][-1]:.2f} s per round", file=sys.stderr)
    plain, he = statistics.median(timings["plain"]), statistics.median(timings["he"])
    return {
        "hospitals": 3,
        "rounds_per_run": rounds,
        "runs_per_mode": repeats,
        "parameters": params,
        "dp": True,
        "seconds_per_round": {"plain": round(plain, 2), "he": round(he, 2)},
        "all_seconds_per_round": {k: [round(v, 2) for v in vs] for k, vs in timings.items()},
        "ratio_he_to_plain": round(he / plain, 3),
        "goal_ratio": 1.3,
        "goal_met": he / plain <= 1.3,
        "he_bytes_per_update": statistics.median(bytes_sent["he"]) if bytes_sent["he"] else None,
        "plain_float32_bytes": params * 4,
    }


def _machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tenseal": version("tenseal"),
        "flwr": version("flwr"),
        "numpy": np.__version__,
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": os.getloadavg(),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| params | values | hospitals | encrypt s / hospital (CPU) | M values / CPU s "
        "| server add s, all hospitals (CPU) "
        "| server add s / hospital | sum serialize s | decrypt s (CPU) | plaintext FedAvg s | server HE / plain "
        "| bytes / hospital | expansion vs float32 | max abs error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["params"]
        label = f"{p['poly_modulus_degree']} {p['coeff_mod_bit_sizes']} 2^{p['global_scale_bits']}"
        cells = [
            label,
            f"{r['values']:,}",
            str(r["clients"]),
            f"{r['encrypt_s_per_client']:.3f} ({r['encrypt_cpu_s_per_client']:.3f})",
            f"{r['encrypt_values_per_cpu_s'] / 1e6:.2f}",
            f"{r['server_add_s_all_clients']:.3f} ({r['server_add_cpu_s_all_clients']:.3f})",
            f"{r['server_add_s_per_client']:.3f}",
            f"{r['server_result_s']:.3f}",
            f"{r['decrypt_s']:.3f} ({r['decrypt_cpu_s']:.3f})",
            f"{r['plain_fedavg_s']:.4f}",
            f"{r['server_he_over_plain']:.0f}",
            f"{r['bytes_per_client']:,}",
            f"{r['expansion']:.2f}",
            f"{r['max_abs_error_vs_plain_fedavg']:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-flare-like",
        dest="flare_like",
        action="store_false",
        help=f"skip the rows for {FLARE_LIKE} (FLARE's default context), 3 hospitals",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--federation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time whole rounds of a real 3-hospital federation, HE against plain (a few minutes)",
    )
    parser.add_argument("--federation-rounds", type=int, default=3)
    parser.add_argument("--federation-repeats", type=int, default=2)
    parser.add_argument("--memory-child", nargs=3, metavar=("DIR", "CLIENTS", "VALUES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]), int(args.memory_child[2]))
        return
    load = os.getloadavg()
    started = time.perf_counter()
    configs = [(HEParams(), v, c) for v in SIZES for c in CLIENTS]
    if args.flare_like:
        configs += [(FLARE_LIKE, v, 3) for v in SIZES]
    rows = []
    for params, values, clients in configs:
        rows.append(run_config(values=values, clients=clients, params=params, repeats=args.repeats))
        print(
            f"{values:>9,} values, {clients:>2} hospitals, {params.poly_modulus_degree}: "
            f"expansion {rows[-1]['expansion']}x, encrypt {rows[-1]['encrypt_s_per_client']} s",
            file=sys.stderr,
        )
    default = [r for r in rows if r["params"] == HEParams().to_dict()]
    result = {
        "benchmark": "he_overhead",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(load),
        "goal": {"max_expansion": GOAL_EXPANSION, "met": all(r["expansion"] <= GOAL_EXPANSION for r in default)},
        "results": rows,
        "server_memory": server_memory(values=max(SIZES), clients=CLIENTS),
        "federation_rounds": (
            federation_rounds(
                rounds=args.federation_rounds,
                repeats=args.federation_repeats,
                workdir=args.out.parent / "he_federation",
            )
            if args.federation
            else None
        ),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(markdown(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
