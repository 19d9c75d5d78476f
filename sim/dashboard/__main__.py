"""``python -m sim.dashboard``: see :mod:`sim.dashboard.server`."""

import sys

from sim.dashboard.server import main

sys.exit(main())
