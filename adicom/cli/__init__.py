"""The ``adicom`` command line: echo, serve, store, find, get, move and demo.

The interface is kept stable because scripts call it. Exit codes: 0 success,
1 the peer rejected, aborted or answered with a failure, 2 a usage error,
3 the peer could not be reached, 4 a timeout.
"""

from adicom.cli.commands import outcome
from adicom.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from adicom.cli.main import build_parser, main

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
