"""Where a hospital's CKKS secret context comes from, and the check that it is the run's key set.

One rule for train messages and for the federation-metrics query, so both refuse the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from client.refusals import RoundRefused
from common.settings import NodeSettings

if TYPE_CHECKING:
    import tenseal as ts


def secret_context_for(node: NodeSettings, institution: str, *, run_key_id: str | None) -> ts.Context:
    """This hospital's secret context; refused when it is not the key set of the run's public context
    (`run_key_id`, sent by the server as `he-key-id`): encrypting under another key set helps no one."""
    from common.he.keys import HEKeyError, key_id, load_secret_context  # TenSEAL only where HE is used

    if node.he_secret_context is None:
        raise RoundRefused(
            code="he-not-configured",
            reason="the run uses privacy-mode 'he' but this SuperNode's node config has no 'he-secret-context' "
            "(the path of he-secret.ctx: `fedcare he install` sets it)",
            institution=institution,
        )
    try:
        context = load_secret_context(node.he_secret_context)
    except HEKeyError as exc:
        raise RoundRefused(code="he-not-configured", reason=str(exc), institution=institution) from exc
    own = key_id(context)
    if run_key_id and own != run_key_id:
        raise RoundRefused(
            code="he-key-mismatch",
            reason=f"this hospital's HE secret context ({node.he_secret_context}) is key set {own}, but the run's "
            f"public context is key set {run_key_id}: install the current key set (`fedcare he install`), or, if "
            f"{own} is the current one, the run was started with a stale he-public.ctx",
            institution=institution,
        )
    return context
