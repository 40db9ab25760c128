"""Fixtures shared by the whole suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.postgres import Cluster, cluster


@pytest.fixture
def anyio_backend() -> str:
    """adicom runs on asyncio (anyio's asyncio backend included)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leftover_waitpid_threads() -> None:
    """Each test starts without the threads of earlier tests' subprocesses.

    asyncio's child watcher (Python 3.11, Unix) waits for each subprocess a
    test starts (``asyncio.create_subprocess_exec``) in a thread of its own,
    named ``waitpid-N``, which ends a moment after the process. Tests that
    check that adicom starts no thread count threads: they would count those.
    This waits (at most 5 s) for them to end; adicom never starts any.
    """
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        thread.name.startswith("waitpid-") for thread in threading.enumerate()
    ):
        time.sleep(0.01)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throw-away PostgreSQL server for the session (fails, never skips, without one)."""
    with cluster() as server:
        yield server
