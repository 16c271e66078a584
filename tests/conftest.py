"""Fixtures and marks shared across the suite: a small trained zoo checkpoint on the real digits data, a latency
cache of the suite's own (so that no test reads or writes the user's), torch on one thread, and the `slow` mark on
the cases of deep zoo models.

The suite has two tiers (the `slow` marker in pyproject.toml): `python -m pytest` runs every test, and
`python -m pytest -m "not slow"`, the everyday tier, leaves out the end-to-end runs (tests/e2e/), the torchrun
launches (tests/test_distributed.py) and the deep-zoo cases marked here, while every test function keeps a case.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from compressor.api import train_model
from compressor.runtime.latency_model import CACHE_ENV
from shared import single_torch_thread

# Zoo models whose cases cost a second or more each, cheapest first. A test parametrised over the zoo keeps its
# cases of lenet300_100, lenet5, resnet20 and resnet32 in the everyday tier; one parametrised over deep models only
# keeps the cheapest of them.
DEEP_MODELS = ("resnet56", "wrn16_8", "resnet110", "mobilenet_v1", "vgg16", "densenet40", "densenet100", "resnet164")

# The zoo's own tests build every model once, cheaply: each model module stays in the everyday tier through them.
ZOO_TESTS = Path(__file__).parent / "models"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """torch runs on one thread here and in the commands the tests start (OMP_NUM_THREADS): on a shared 2-core
    machine under load its threads wait on each other (see tests/shared.py; a one-epoch compress run of lenet5
    took 10 s with two threads and 3 s with one), and on a quiet one the everyday tier takes as long either way."""
    with pytest.MonkeyPatch.context() as patch, single_torch_thread():
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


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


def _deep_rank(item: pytest.Item) -> int | None:
    """The place in DEEP_MODELS of the deep model a case is parametrised with (by a parameter's value), if any."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    ranks = [DEEP_MODELS.index(value) for value in params.values() if isinstance(value, str) and value in DEEP_MODELS]
    return min(ranks) if ranks else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow the cases of deep zoo models, outside the zoo's own tests; by name, so that a new test
    parametrised over the zoo is sorted without an edit. Runs before `-m` selects."""
    by_function = defaultdict(list)
    for item in items:
        if ZOO_TESTS not in item.path.parents:
            by_function[item.path, getattr(item, "originalname", item.name)].append(item)
    for cases in by_function.values():
        ranks = {item: _deep_rank(item) for item in cases}
        deep = [item for item in cases if ranks[item] is not None]
        if deep and len(deep) == len(cases):
            deep.remove(min(deep, key=ranks.__getitem__))
        for item in deep:
            item.add_marker(pytest.mark.slow)
