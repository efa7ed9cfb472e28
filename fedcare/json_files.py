"""Reading the small JSON files that travel between sites (requests, rosters, key-set params, kits).

Each arrives from another site, so each reader turns a missing, damaged or foreign file into its own
typed error naming the file; this is the one place that reads one as a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_json_object(
    path: Path, *, error: Callable[[str], Exception], missing: str, remedy: str = ""
) -> dict[str, Any]:
    """The JSON object in `path`; `error(message)` is raised for a missing file (`missing`), text that is
    not JSON (with `remedy` appended), or JSON that is not an object."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{path}: not JSON ({exc}){remedy}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw
