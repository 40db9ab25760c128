"""The ``adicom`` command line: echo, serve, store, find, get, move and demo.

The interface is kept stable because scripts call it. Exit codes: 0 success,
1 the peer rejected, aborted or answered with a failure, 2 a usage error,
3 the peer could not be reached, 4 a timeout.
"""

import os
from typing import TYPE_CHECKING

# pydicom imports numpy when it is installed, and numpy's OpenBLAS starts a
# pool of threads as it loads (one per core but one). adicom's own processes
# (adicom serve, its workers, the client commands) need none: keep it at one
# thread unless the user chose otherwise. Set before the first import of
# pydicom below; a library user's process is left alone.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from adicom.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from adicom.cli.main import build_parser, main

if TYPE_CHECKING:
    from adicom.cli.commands import outcome

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "outcome",
    "build_parser",
    "main",
]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """``outcome`` lives with the client commands, imported on first use (PEP 562)."""
        if name != "outcome":
            raise AttributeError(f"module 'adicom.cli' has no attribute {name!r}")
        from adicom.cli.commands import outcome

        return outcome
