"""Which files a hospital's table may be, by suffix: declared once, without pandas.

The loader (`common.data`) reads each kind; the node's supervisor (`fedcare.node`), which must not load
pandas, asks whether the table is Parquet so that its warm executor keeps pyarrow loaded for it
(`fedcare.warm_state` says why pyarrow is otherwise left out).
"""

from __future__ import annotations

from pathlib import Path

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


def is_parquet(path: Path | str) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES
