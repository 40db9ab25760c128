"""``python -m adicom`` runs the command line."""

import sys

from adicom.cli import main

sys.exit(main())
