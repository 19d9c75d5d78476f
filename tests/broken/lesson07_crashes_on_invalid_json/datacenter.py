"""BROKEN ON PURPOSE (lesson 07): trusts every payload to be JSON, and dies on one that is not.

The reference data center, except that each payload first goes through a bare
``json.loads``: the first malformed payload raises, the process exits, and (since
it was never acknowledged) the broker hands the same payload back at every restart.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sim.datacenter import __main__ as datacenter
from sim.datacenter import storage

checked = storage.check


def trusting_check(topic, payload, root):
    json.loads(payload)  # no try/except: "the line only sends JSON"
    return checked(topic, payload, root)


storage.check = trusting_check

if __name__ == "__main__":
    sys.exit(datacenter.main())
