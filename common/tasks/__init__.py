"""Tasks: what a federation trains, named by an importable module in its schema (`task_module`).

A task is a Python package installed at every site (fedcare's built-in ones ship inside fedcare):

* at its top level, which the ServerApp and the hospitals import:
  ``__version__`` (a string; or the version of the installed distribution that provides it),
  ``build_model(schema) -> torch.nn.Module`` (fedcare seeds torch before calling it), and optionally
  ``make_loss() -> torch.nn.Module`` (a torch loss with a ``reduction`` attribute; default cross-entropy);
* in its ``data`` submodule, which only hospitals import (the server never touches hospital data code):
  ``load_data(path, schema) -> common.data.HospitalData``.

Every site builds the model through `common.tasks.model_task.build_task_model`, which makes it
DP-compatible the same way everywhere and checks the version and architecture hash the ServerApp
pinned into the run's schema. docs/tasks.md is the guide; examples/custom_task/ a consortium's task.
"""

DATA_SUBMODULE = "data"  # the hospital-only half of a task package
