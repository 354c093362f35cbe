"""Shared test fixtures. `../shared/` (beside the repository) holds the parity fixtures and real data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True, scope="session")
def _empty_weights_cache(tmp_path_factory):
    """No test sees weights a developer fetched: without a model choice, loading must refuse."""
    import os

    old = os.environ.get("SAMMOE_CACHE")
    os.environ["SAMMOE_CACHE"] = str(tmp_path_factory.mktemp("weights-cache"))
    yield
    if old is None:
        os.environ.pop("SAMMOE_CACHE", None)
    else:
        os.environ["SAMMOE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (parity fixtures and real data live there)")
    return SHARED
