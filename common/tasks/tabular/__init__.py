"""The built-in tabular task: a CSV or Parquet table per hospital, the MLP or digits CNN of `common.models`.

This is fedcare's behaviour from before tasks existed, unchanged: the schema's feature columns feed
`common.models.build_model`, and `common.data.load_hospital_table` (in `.data`) reads the table.
"""

from common.models import build_model

__version__ = "1"  # bump when the model or the loader changes what a site trains
__all__ = ["build_model"]
