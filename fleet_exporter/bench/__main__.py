"""``python -m fleet_exporter.bench sim|exporter|bare``: one child process of a run."""

import sys

from .children import child_main

sys.exit(child_main(sys.argv[1:]))
