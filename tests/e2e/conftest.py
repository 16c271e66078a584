"""End-to-end runs: whole compress, train, bench and deploy runs through the API, the command and real processes,
on real data, crossing every layer.

They take seconds each, so everything in this folder is marked slow: `python -m pytest` runs it (as CI does), and
`python -m pytest -m "not slow"`, the everyday tier, leaves it to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest hands every conftest the whole session's items: only this folder's are marked, before `-m` selects.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
