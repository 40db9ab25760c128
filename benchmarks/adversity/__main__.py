"""`python -m benchmarks.adversity` (see benchmarks/README.md, "Adversity")."""

from __future__ import annotations

import sys

from benchmarks.adversity.cli import main

if __name__ == "__main__":
    sys.exit(main())
