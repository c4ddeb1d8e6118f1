"""``python -m fleet_exporter``: the same as the ``fleet-exporter`` command."""

import sys

from .cli import main

sys.exit(main())
