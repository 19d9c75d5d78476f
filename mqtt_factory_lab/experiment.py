"""Small helpers the lessons' experiments share, so that each lives once (issue 21).

``from mqtt_factory_lab.experiment import unique, json_field, wait_broker_saw_disconnect``
"""

from __future__ import annotations

import json
import re
import uuid

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.core.client import ReceivedMessage


def unique(prefix: str) -> str:
    """A client id (or topic level) no other test uses: ``press-3f9a1c2b``.

    Two clients with one id take the session from each other, and tests run in parallel.
    """
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def json_field(message: ReceivedMessage, name: str) -> object:
    """A field of a JSON object payload, or None when the payload is anything else."""
    try:
        payload = json.loads(message.payload)
    except ValueError:
        return None
    return payload.get(name) if isinstance(payload, dict) else None


def wait_broker_saw_disconnect(broker: Broker, client_id: str, mark: int) -> None:
    """Where the broker's log is readable, wait until it has handled ``client_id``'s DISCONNECT.

    An experiment that then proves an absence with a round trip (``sync``), or publishes
    "while the client is away", knows the broker has finished with the departing client.
    ``mark`` is the broker's log position taken before the disconnect (``broker.log_mark()``).
    Without a readable log (``--broker-url``) it returns at once.
    """
    if LOG in broker.capabilities:
        broker.wait_for_log(f"Client {re.escape(client_id)} disconnected", timeout=5, since=mark)
