"""What a hospital is called in logs, replies and results.json.

A SuperNode started without `institution` in its node config still takes part; it is then named by
its node id. Clients, the reply sorter and the SecAgg+ rounds must all agree on that name, or one
hospital would show up under two names in results.json, hence this one place.
"""

from __future__ import annotations

UNNAMED_PREFIX = "node-"


def institution_name(name: object | None, *, node_id: int) -> str:
    """`name` as given (node config, status record), or `node-<id>` when none was given."""
    return f"{UNNAMED_PREFIX}{node_id}" if name is None else str(name)
