"""Lesson 03's instruments: the device state its experiments store and read back.

The chapter (``labs/03_retained.py``) holds the concept and the experiments; the controller
experiment's alarm and wait are lesson 02's (:mod:`mqtt_factory_lab.experiment.qos`).
"""

from __future__ import annotations

import time
from typing import Any

from mqtt_factory_lab.contract import validate


def device_state(device_id: str, state: str, produced: int = 0) -> dict[str, Any]:
    """A device-state payload as the factory's devices publish it (checked against its schema)."""
    payload = {
        "ts": time.time(),
        "device_id": device_id,
        "kind": "press",
        "state": state,
        "setpoints": {"temperature": 180.0},
        "counters": {
            "produced": produced,
            "alarms_raised": 0,
            "commands_accepted": 0,
            "commands_rejected": 0,
        },
    }
    return validate("state", payload)
