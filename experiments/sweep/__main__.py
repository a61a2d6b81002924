"""`python -m experiments.sweep run|status|report ...` (experiments/sweep/cli.py)."""

import sys

from experiments.sweep import cli

sys.exit(cli.main())
