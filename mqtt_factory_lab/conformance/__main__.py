"""``python -m mqtt_factory_lab.conformance``: see :mod:`mqtt_factory_lab.conformance.run`."""

import sys

from mqtt_factory_lab.conformance.run import main

sys.exit(main())
