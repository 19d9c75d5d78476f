"""Stop a pytest that lacks the lab's packages with one sentence, not an import traceback.

Imported first by :mod:`mqtt_factory_lab.plugin`: a student who types ``pytest`` from
another environment learns what to run instead.
"""

from __future__ import annotations

import importlib.util

NEEDED = ("paho", "jsonschema", "referencing", "testcontainers", "pytest_timeout")

missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
if missing:
    raise SystemExit(
        f"mqtt-factory-lab: this pytest lacks the lab's packages ({', '.join(missing)}). "
        "Run scripts/setup once, then use .venv/bin/pytest "
        "(for example `.venv/bin/pytest labs/03_retained.py -v`)."
    )
