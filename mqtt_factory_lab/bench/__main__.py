"""``python -m mqtt_factory_lab.bench``: see :mod:`mqtt_factory_lab.bench.lab`."""

import sys

from mqtt_factory_lab.bench.lab import main

sys.exit(main())
