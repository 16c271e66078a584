"""Fixtures of the Bernoulli method's tests: torch on one thread (see tests/shared.py)."""

import pytest

from shared import single_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield
