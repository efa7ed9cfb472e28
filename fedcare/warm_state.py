"""What a warm executor's parent loads once, and what each child forked from it resets first.

The parent imports and exercises the heavy third-party libraries single-threaded (a fork taken after
torch's OpenMP pool started deadlocks the child's first parallel kernel: tests/fedcare/test_warm_executor.py
shows both sides); each child then gets its own random state and torch thread count. Only third-party
modules are imported here, never `client`, `common` or `server`: Flower's `load_app` reuses `sys.modules`,
so a pre-imported copy would shadow the app the run ships.

pyarrow is left out unless the hospital's table is Parquet (`--parquet`, set by `fedcare.node`). pandas 3
imports it with itself, 33 MB of the parent's 484 MB RSS (docs/benchmarks.md: the node's idle goal is 600 MB),
though only `read_parquet` needs it. pandas then runs as if pyarrow were absent: a CSV's text columns are stored
as Python strings instead of Arrow strings, with the same values and the same numbers parsed from them
(tests/fedcare/test_warm_executor.py compares a child's tables with a normal process's), and `read_parquet`
imports pyarrow when first called. A Parquet node keeps it loaded: that import costs each child 0.1 s of CPU.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys


def import_pandas(*, pyarrow: bool) -> None:
    """pandas, with pyarrow only when `pyarrow` (the module docstring says why), and pandas first: the libraries
    imported after it may import it too."""
    if pyarrow or "pyarrow" in sys.modules or "pandas" in sys.modules:
        import pandas  # noqa: F401

        return
    sys.modules["pyarrow"] = None  # type: ignore[assignment]  # `import pyarrow` raises ImportError
    try:
        import pandas  # noqa: F401
    finally:
        del sys.modules["pyarrow"]


def warm_up(*, serverapp: bool = False, pyarrow: bool = False) -> int:
    """Import and exercise the heavy libraries once, single-threaded; returns torch's default thread count."""
    import_pandas(pyarrow=pyarrow)
    import numpy as np
    import torch

    logging.getLogger("opacus").setLevel(logging.ERROR)  # its notes on the toy model below
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # before any kernel: no OpenMP pool may exist when we fork
    import flwr.app  # noqa: F401
    import flwr.client.mod  # noqa: F401  (secaggplus_mod)
    import flwr.clientapp  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    if serverapp:  # 35 MB (Flower's SuperLink state, SQLAlchemy) a hospital's executor does without
        import flwr.superlink.cli.flwr_serverapp  # noqa: F401
    import opacus
    import pydantic  # noqa: F401
    import tenseal  # noqa: F401
    from opacus.accountants.utils import get_noise_multiplier

    # One DP-SGD step on a toy model: loads torch._dynamo (the first optimizer), Opacus' grad-sample
    # hooks and the accountant's code paths, so no message pays for them.
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    data = torch.utils.data.TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    engine = opacus.PrivacyEngine(accountant="rdp")
    with np.errstate(all="ignore"):
        dp_model, optimizer, criterion, dp_loader = engine.make_private(
            module=model,
            optimizer=torch.optim.Adam(model.parameters()),
            criterion=torch.nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="ghost",
        )
        for x, y in dp_loader:
            if len(x):
                optimizer.zero_grad()
                criterion(dp_model(x), y).backward()
                optimizer.step()
        dp_model.cleanup()
        get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.1, steps=10, accountant="rdp")
    freeze_for_fork()
    return threads


def freeze_for_fork() -> None:
    """Put every object this process holds out of the cyclic GC's reach, right before it forks (and once after
    the warm-up): a full collection in a child otherwise walks, and so copies page by page, every object of the
    warm parent (torch, Opacus, flwr): 0.35-0.4 CPU-s a collection in a child, 0.03 after `gc.freeze()`, on
    these machines. What Python's `gc.freeze` documentation advises for a process that forks without exec."""
    import gc

    gc.freeze()


def prepare_child(*, threads: int) -> None:
    """First thing in a forked child: default signal handling, random state no sibling shares, torch's thread
    count back (the parent ran with one), and bytecode caching on.

    The run's app is imported afresh by every child, from Flower's app folder (named by the FAB's hash). Under
    PYTHONDONTWRITEBYTECODE, which containers and CI runners often set, each child compiled the app from source:
    about 0.25 s of a message with three hospitals on two cores (py-spy). Its `__pycache__` lives next to the app
    in that folder, which Flower made for this FAB and nothing else writes."""
    import numpy as np
    import torch

    sys.dont_write_bytecode = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    random.seed(os.urandom(32))
    np.random.seed(int.from_bytes(os.urandom(4), "little"))
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    torch.set_num_threads(threads)
