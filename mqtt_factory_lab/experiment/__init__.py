"""Small helpers the lessons' experiments share, so that each lives once (issue 21).

``from mqtt_factory_lab.experiment import unique, json_field, wait_broker_saw_disconnect``

``unique``, ``json_field``, ``wait_broker_saw_disconnect``, ``wait_or_fail`` (the harness's
one polling loop, :func:`mqtt_factory_lab.core.process.wait_until`, failing with the
lesson's message) and ``remember_mids`` (acknowledge by hand, as a data center does).
A lesson's own instruments live beside it: :mod:`~mqtt_factory_lab.experiment.topics` (01),
:mod:`~mqtt_factory_lab.experiment.qos` (02),
:mod:`~mqtt_factory_lab.experiment.retained` (03), :mod:`~mqtt_factory_lab.experiment.wills` (04),
:mod:`~mqtt_factory_lab.experiment.sessions` (05), :mod:`~mqtt_factory_lab.experiment.acl` (06),
:mod:`~mqtt_factory_lab.experiment.tls` (08), :mod:`~mqtt_factory_lab.experiment.mqtt5` (09)
and :mod:`~mqtt_factory_lab.experiment.ahead` (04, 05: runs started at a module's first
experiment, so that the broker's clock ticks while the other experiments run);
lesson 07's are pytest-free, in :mod:`mqtt_factory_lab.core.traceability`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until


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


def wait_or_fail(condition: Callable[[], object], timeout: float, why: Callable[[], str]) -> None:
    """Wait until ``condition`` is true (:func:`~mqtt_factory_lab.core.process.wait_until`);
    when ``timeout`` passes first, fail the experiment with ``why()``.

    ``why`` is called only then, so the message can say what the world looked like at the
    deadline (``lambda: f"... {database.describe()}"``).

    :raises AssertionError: ``why()`` alone, no harness frames.
    """
    __tracebackhide__ = True
    try:
        wait_until(condition, timeout)
    except ProcessTimeout:
        raise AssertionError(why()) from None


def remember_mids(client: RecordingClient, topic: str) -> list[int]:
    """Make ``client`` acknowledge QoS 1 messages by hand, as a data center does after its
    commit, and note the packet id (mid) of each message on ``topic``, in arrival order.

    Call it before ``client.connect()``; acknowledge with ``client.paho.ack(mid, 1)``.
    Everything ``client`` receives is still recorded as usual.
    """
    client.paho.manual_ack_set(True)
    mids: list[int] = []
    record_message = client.paho.on_message

    def remember_mid(paho: Any, userdata: Any, message: Any) -> None:
        if message.topic == topic:
            mids.append(message.mid)
        record_message(paho, userdata, message)

    client.paho.on_message = remember_mid
    return mids
