"""Shared test fixtures. `../shared/` (beside the repository) holds the parity fixtures and real data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (parity fixtures and real data live there)")
    return SHARED
