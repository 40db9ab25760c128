"""`python -m benchmarks.calls` (see benchmarks/README.md, "Calls and batches")."""

from __future__ import annotations

import sys

from benchmarks.calls.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
