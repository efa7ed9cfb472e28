from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from common.data import HospitalData
from tests.support.task_packages import make_task  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def breast_cancer() -> HospitalData:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return HospitalData(features=x.astype(np.float32), labels=y.astype(np.int64))
