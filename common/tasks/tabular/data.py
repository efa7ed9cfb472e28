"""The tabular task's hospital side: `common.data.load_hospital_table` under the task interface's name."""

from common.data import load_hospital_table as load_data

__all__ = ["load_data"]
