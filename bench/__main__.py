"""``python -m bench`` (``make bench``): run the benchmark; ``python -m bench faults``
(``make bench-faults``): the fault-at-scale benchmark; ``python -m bench child ROLE``: one
of their child processes (started by the benchmark itself)."""

import sys

from . import faults
from .children import child_main
from .runner import cli_main

if sys.argv[1:2] == ["child"]:
    sys.exit(child_main(sys.argv[2:]))
if sys.argv[1:2] == ["faults"]:
    sys.exit(faults.main(sys.argv[2:]))
sys.exit(cli_main(sys.argv[1:]))
