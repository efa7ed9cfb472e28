"""The warm executor's fork: children of one warm parent run torch's parallel kernels without deadlock, and
draw randomness (DP noise included) no sibling shares. Each case runs in a fresh interpreter, so the state
it forks from is exactly the executor's (pytest's own process may have started torch's thread pool)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcare.child_report import _INPUT, _REPLIED, ChildReport, _write_frame
from fedcare.flower_internals import ServedMessage

REPO = Path(__file__).resolve().parents[2]

FORK_TWO_CHILDREN = textwrap.dedent(
    """
    import json, os, random, signal, sys, time, warnings
    warnings.simplefilter("ignore")
    from fedcare.warm_state import prepare_child, warm_up

    mode = sys.argv[1]
    threads = warm_up()
    import numpy as np
    import torch
    if mode == "parallel-parent":  # what the executor must never do: run parallel kernels, then fork
        torch.set_num_threads(max(threads, 2))
        x = torch.randn(3000, 3000)
        (x @ x).sum(), torch.randn(10_000_000).exp_().sum()
    if mode == "dp":  # the same model and data in both children: only the DP randomness may differ
        from client.dp_training import train_private
        from common.data import HospitalData
        from common.schema import DatasetSchema

        schema = DatasetSchema(label="y", num_classes=2, features=[{"name": f"x{i}"} for i in range(4)])
        from common.models import build_model
        model = build_model(schema, seed=1)
        data = HospitalData(np.random.default_rng(0).normal(size=(64, 4)).astype("float32"),
                            (np.arange(64) % 2).astype("int64"))

    def child(write_fd):
        prepare_child(threads=max(threads, 2))
        x = torch.randn(2000, 2000)
        (x @ x).sum(), torch.randn(10_000_000).exp_().sum()  # parallel kernels, in the child
        out = {"random": random.random(), "numpy": float(np.random.rand()), "torch": float(torch.rand(1))}
        if mode == "dp":
            train_private(model, data, batch_size=16, epochs=1, learning_rate=0.05, noise_multiplier=1.0,
                          max_grad_norm=1.0, device=torch.device("cpu"), seed=7)
            out["weights"] = [float(v) for v in torch.cat([p.flatten() for p in model.parameters()])[:8]]
        os.write(write_fd, json.dumps(out).encode())

    def cpu_and_state(pid):  # /proc/PID/stat: state, then utime and stime in clock ticks, summed over threads
        fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12]), fields[0]

    timeout, stall = float(sys.argv[2]), float(sys.argv[3])
    results = []
    for _ in range(2):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            child(write_fd)
            os._exit(0)
        os.close(write_fd)
        deadline, last_cpu, still_since = time.monotonic() + timeout, -1, time.monotonic()
        while not os.waitpid(pid, os.WNOHANG)[0]:
            now = time.monotonic()
            cpu, state = cpu_and_state(pid)
            if cpu != last_cpu or state == "R":  # working, or waiting for a core on a loaded machine
                last_cpu, still_since = cpu, now
            # Hung: asleep with no CPU used for `stall` seconds (a deadlock, not a slow machine), or past the deadline.
            if now > deadline or (stall and now - still_since > stall):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                results.append(None)
                break
            time.sleep(0.05)
        else:
            results.append(json.loads(os.read(read_fd, 1 << 20)))
        os.close(read_fd)
        if results[-1] is None and stall:
            break  # the control needs one hung child, not two
    print(json.dumps({"threads": threads, "children": results, "frozen": __import__("gc").get_freeze_count()}))
    """
)


def _fork_two(mode: str, *, child_timeout: float, stall: float = 0.0) -> dict:
    """`stall` > 0: a child asleep without using CPU for that long counts as hung, and the first hung child
    ends the experiment; 0: only `child_timeout` does (children that must finish)."""
    return _last_json_line(FORK_TWO_CHILDREN, mode, str(child_timeout), str(stall))


def _last_json_line(script: str, *args: str) -> dict:
    """Run `script` in a fresh interpreter (its own warm parent); the JSON line it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_children_of_the_warm_parent_run_parallel_kernels_and_draw_different_random_numbers() -> None:
    out = _fork_two("warm", child_timeout=120)
    first, second = out["children"]
    assert first is not None and second is not None, "a child forked from the warm parent hung"
    for source in ("random", "numpy", "torch"):
        assert first[source] != second[source], f"two children drew the same {source} number"
    # The warm parent's objects are out of the GC's reach: a full collection in a child would otherwise walk (and
    # copy, page by page) all of them, 0.35-0.4 CPU-s each (fedcare.warm_state.freeze_for_fork).
    assert out["frozen"] > 100_000


def test_two_children_train_the_same_model_on_the_same_data_with_different_dp_noise() -> None:
    out = _fork_two("dp", child_timeout=120)
    first, second = out["children"]
    assert first is not None and second is not None
    assert first["weights"] != second["weights"], "two messages drew the same DP noise and sampling"


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch's thread pool needs 2 cores to exist at all")
def test_control_a_parent_that_ran_parallel_kernels_forks_children_that_hang() -> None:
    """Why the executor's parent runs torch single-threaded: this is what happens otherwise.

    A child counts as hung when it sleeps for 5 s without using any CPU (a deadlock: a slow child keeps using
    CPU or waits runnable for a core), so the control no longer waits out a 30 s timeout twice."""
    out = _fork_two("parallel-parent", child_timeout=30, stall=5.0)
    assert None in out["children"], "no child hung: re-check whether the parent's one-thread rule is still needed"


def test_the_child_report_reads_frames_split_anywhere() -> None:
    served = ServedMessage(b"\x00message", node_id=7, run_id=3)
    read_fd, write_fd = os.pipe()
    import pickle

    _write_frame(write_fd, _INPUT, pickle.dumps(served))
    _write_frame(write_fd, _REPLIED)
    os.close(write_fd)
    data = os.read(read_fd, 1 << 16)
    os.close(read_fd)
    report = ChildReport()
    for i in range(len(data)):  # byte by byte: a pipe may deliver any split
        report.feed(data[i : i + 1])
    assert report.served == served and report.replied


def test_an_idle_executor_answers_health_probes_and_still_hears_the_supernode(tmp_path: Path) -> None:
    import socket

    from fedcare.flower_internals import RuntimeApi
    from fedcare.warm_executor import WarmExecutor

    health = socket.create_server(("127.0.0.1", 0))
    wakeup = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    wakeup.bind(str(tmp_path / "notify"))
    executor = WarmExecutor(RuntimeApi("127.0.0.1:1"), poll=5.0, health=health, wakeup=wakeup)
    with socket.create_connection(health.getsockname(), timeout=5) as probe:
        executor._wait_for_work()  # returns at once: the probe is accepted and closed, not left to time out
        assert probe.recv(1) == b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as supernode:
        supernode.sendto(b"!", str(tmp_path / "notify"))
    started = time.monotonic()
    executor._wait_for_work()
    assert time.monotonic() - started < 1.0, "the SuperNode's word did not end the wait"
    health.close()
    wakeup.close()


def test_a_child_killed_while_it_unpacks_leaves_no_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower unpacks each message's app into a temp folder; a child SIGKILLed meanwhile cannot remove it."""
    import signal
    import tempfile

    import fedcare.warm_executor as warm
    from fedcare.flower_internals import RuntimeApi

    def unpack_then_die(*_: object, **__: object) -> int:  # stands in for Flower's run_task, killed mid-unpack
        Path(tempfile.mkdtemp(), "app.py").write_text("# the run's app")
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(warm, "run_task", unpack_then_die)
    monkeypatch.setattr(warm, "answer_failed_task", lambda *_, **__: False)  # no SuperNode to answer to
    executor = warm.WarmExecutor(RuntimeApi("127.0.0.1:1"), message_timeout=60.0)
    executor.run_task("token")
    assert executor.failed == 1
    assert list(tmp_path.iterdir()) == []


def test_a_child_caches_the_apps_bytecode_even_under_pythondontwritebytecode(tmp_path: Path) -> None:
    """Each message imports the run's app afresh; without a bytecode cache every child compiles it from source."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "task_module.py").write_text("VALUE = 42\n")
    script = textwrap.dedent(
        """
        import sys
        from fedcare.warm_state import prepare_child
        assert sys.dont_write_bytecode  # PYTHONDONTWRITEBYTECODE=1, as CI runners set it
        prepare_child(threads=1)
        sys.path.insert(0, sys.argv[1])
        import task_module
        assert task_module.VALUE == 42
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(app)], check=True, env=env, timeout=120)
    assert list((app / "__pycache__").glob("task_module.*.pyc"))


TABLES_IN_A_CHILD = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("ignore")
    from fedcare.warm_state import prepare_child, warm_up

    threads = warm_up()
    parent_has_pyarrow = "pyarrow" in sys.modules
    folder = sys.argv[1]
    pid = os.fork()
    if pid == 0:  # what a ClientApp does with the hospital's table
        code = 1
        try:
            prepare_child(threads=threads)
            import numpy as np
            from common.data import _read_table, load_hospital_table
            from common.schema import DatasetSchema, SchemaError

            schema = DatasetSchema.model_validate(json.load(open(f"{folder}/schema.json")))
            out = {"string_storage": _read_table(__import__("pathlib").Path(f"{folder}/table.csv"))["y"].dtype.storage}
            for name in ("table.parquet", "table.csv"):
                data = load_hospital_table(f"{folder}/{name}", schema)
                np.save(f"{folder}/{name}.features.npy", data.features)
                np.save(f"{folder}/{name}.labels.npy", data.labels)
            try:
                load_hospital_table(f"{folder}/bad.csv", schema)
            except SchemaError as exc:
                out["refusal"] = str(exc)
            out["child_has_pyarrow"] = "pyarrow" in sys.modules
            json.dump(out, open(f"{folder}/child.json", "w"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"parent_has_pyarrow": parent_has_pyarrow, "child_exit": os.waitstatus_to_exitcode(status)}))
    """
)


def test_a_child_of_the_warm_parent_without_pyarrow_loads_csv_and_parquet_as_a_normal_process_does(
    tmp_path: Path,
) -> None:
    """The parent leaves pyarrow out (fedcare.warm_state: 33 MB of idle RSS); the hospital's data must not notice."""
    import numpy as np
    import pandas as pd

    from common.data import load_hospital_table
    from common.schema import DatasetSchema, SchemaError

    schema = DatasetSchema(
        label="y", num_classes=3, features=[{"name": "age", "center": 50.0, "scale": 12.5}, {"name": "dose"}]
    )
    (tmp_path / "schema.json").write_text(schema.model_dump_json())
    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        {
            "age": rng.normal(50, 12, size=40).round(3),
            "dose": [f"{v:.6g}" for v in rng.exponential(2.0, size=40)],  # text in the Parquet file, as exported
            "y": rng.integers(0, 3, size=40),
            "note": ["x"] * 40,
        }
    )
    table.to_parquet(tmp_path / "table.parquet")
    rows = [f"{r.age},{r.dose}{' ' * (i % 2)},{' ' * (i % 3)}{r.y},{r.note}" for i, r in enumerate(table.itertuples())]
    (tmp_path / "table.csv").write_text("\n".join(["age,dose,y,note", *rows]) + "\n")  # stray spaces, as typed
    (tmp_path / "bad.csv").write_text("age,dose,y\n40,1.0,1\n41,1e400,0\n")

    parent = _last_json_line(TABLES_IN_A_CHILD, str(tmp_path))
    assert parent == {"parent_has_pyarrow": False, "child_exit": 0}
    child = json.loads((tmp_path / "child.json").read_text())
    assert child["string_storage"] == "python"  # the cut is in effect: pandas stores text without Arrow
    assert child["child_has_pyarrow"]  # imported by read_parquet, in the child only

    assert pd.Series(["1"], dtype=str).dtype.storage == "pyarrow"  # this process imported pandas normally
    for name in ("table.parquet", "table.csv"):
        expected = load_hospital_table(tmp_path / name, schema)
        features, labels = (np.load(tmp_path / f"{name}.{part}.npy") for part in ("features", "labels"))
        assert features.dtype == expected.features.dtype and np.array_equal(features, expected.features), name
        assert labels.dtype == expected.labels.dtype and np.array_equal(labels, expected.labels), name
    with pytest.raises(SchemaError) as refused:
        load_hospital_table(tmp_path / "bad.csv", schema)
    assert child["refusal"] == str(refused.value)


def test_a_parquet_node_keeps_pyarrow_loaded() -> None:
    script = (
        "import sys; from fedcare.warm_state import import_pandas; import_pandas(pyarrow=True); print(*sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    )
    assert "pyarrow" in done.stdout.split()
