"""One key set per test module: keygen takes milliseconds, but most tests need the same pair."""

from __future__ import annotations

import pytest
import tenseal as ts

from common.he.keys import make_keys


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_keys()


@pytest.fixture(scope="module")
def ctx(keys: tuple[bytes, bytes]) -> ts.Context:
    return ts.context_from(keys[0])
