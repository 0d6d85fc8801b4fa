"""``python -m irprune`` runs the command line."""

import sys

from irprune.cli import main

sys.exit(main())
