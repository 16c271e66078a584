"""Fixtures shared across the suite: a small trained zoo checkpoint on the real digits data, and a latency cache of
the suite's own, so that no test reads or writes the user's."""

from __future__ import annotations

import pytest

from compressor.api import train_model
from compressor.runtime.latency_model import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def _own_latency_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("latency-cache")))
        yield


@pytest.fixture(scope="session")
def lenet5_checkpoint(tmp_path_factory):
    """lenet5 trained for 2 epochs on digits, written by the same code path as `compress train`."""
    path = tmp_path_factory.mktemp("zoo") / "lenet5.pt"
    outcome = train_model("lenet5", path, epochs=2, progress=False)
    assert outcome.result.test_accuracy > 0.8
    return path
