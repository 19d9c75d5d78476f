"""``python -m mqtt_factory_lab.grading SUBMISSIONS_DIR --out DIR``: ``mqtt-lab grade``."""

import sys

from mqtt_factory_lab.cli import main

sys.exit(main(["grade", *sys.argv[1:]]))
