"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """adicom runs on asyncio (anyio's asyncio backend included)."""
    return "asyncio"
