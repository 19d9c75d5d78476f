"""BROKEN ON PURPOSE (lesson 07): stores every delivery as a new row, redeliveries included.

The reference data center with its idempotency key replaced by a fresh random id
per delivery, as if ``mqtt_messages`` had no UNIQUE key: a QoS 1 record that
arrives twice (at least once means sometimes twice) is stored twice.
"""

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sim.datacenter import __main__ as datacenter
from sim.datacenter import storage

storage.idempotency_key = lambda topic, payload, document=None: uuid.uuid4().hex

if __name__ == "__main__":
    sys.exit(datacenter.main())
