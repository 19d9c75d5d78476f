"""Lesson 06's instruments: the parties of an access-control experiment and how a verdict is told.

The chapter (``labs/06_acl.py``) holds the concept, the permission matrix and the
experiments; this module what they share:

* :class:`Parties` — one connection per client id of the matrix;
* :func:`publish_for_ack`, :func:`round_trip`, :func:`probe` — publish and read the broker's
  answer, prove an absence, tell one experiment's messages apart;
* :func:`denials`, :func:`denied_lines`, :func:`how_to_allow`, :func:`expect`, :func:`shown`
  — the broker's own account of a denial, the ACL line that would allow it, and a failure
  with the lesson's message alone;
* :func:`refused_login` — the CONNACK of a client the broker must turn away (lessons 06, 09).

Lesson 08 (per-machine ACLs under mutual TLS) and lesson 09 (PUBACK 0x87) use them too.

The brokers the lesson loads its ACLs into are fixtures: ``acl_broker``, ``lab_acl`` and
``hardened`` (:mod:`mqtt_factory_lab.fixtures.acl`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.core.acl import MatrixClient
from mqtt_factory_lab.core.client import MQTTTimeout, RecordingClient


class Parties:
    """The clients of one experiment, one connection per client id (a second one would
    take the first one's session over)."""

    def __init__(self, mqtt_client: Callable[..., RecordingClient], broker: Broker) -> None:
        self._make, self._broker = mqtt_client, broker
        self._by_id: dict[str, RecordingClient] = {}

    def __call__(self, who: MatrixClient, protocol: str = "5") -> RecordingClient:
        if who.client_id not in self._by_id:
            self._by_id[who.client_id] = self._make(
                who.client_id,
                protocol=protocol,
                broker=self._broker,
                username=who.username,
            )
        return self._by_id[who.client_id]


def publish_for_ack(
    client: RecordingClient, topic: str, payload: Any, qos: int = 1, **publish: Any
) -> ReasonCode:
    """Publish and return the broker's answer: the PUBACK reason code (QoS 1), or success (QoS 0).

    MQTT 3.1.1 PUBACKs carry no code, so paho reports success for them (as it does for an
    MQTT 5 PUBACK without one). ``publish`` goes to ``client.publish`` (``properties=...``).
    """
    info = client.publish(topic, payload, qos=qos, **publish)
    return client.puback_reason(info) or ReasonCode(PacketTypes.PUBACK, "Success")


def round_trip(client: RecordingClient, acl: str = "ACL") -> None:
    """``client.sync()``, failing with the ACL rule it needs when the round trip cannot happen.

    ``acl`` names the file the student keeps the rule in ("ACL", "per-machine ACL")."""
    __tracebackhide__ = True
    try:
        client.sync(timeout=3)
    except (MQTTTimeout, ConnectionError) as error:
        message = (
            f"{client.client_id}'s round trip through lab/sync/{client.client_id}/# did not come "
            "back, so the lab cannot prove what was (not) delivered. Keep the rule "
            f"`pattern readwrite lab/sync/%c/#` in your {acl}.\n  ({error})"
        )
    else:
        return
    pytest.fail(message, pytrace=False)


def expect(condition: object, message: str) -> None:
    """Fail with the lesson's message alone, without a source listing, unless ``condition``."""
    __tracebackhide__ = True
    if not condition:
        pytest.fail(message, pytrace=False)


def shown(path: Path) -> str:
    """A file's path as a student typed it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def probe(client: MatrixClient, what: str) -> bytes:
    return f"acl probe {uuid.uuid4().hex[:12]}: {what} by {client.client_id}".encode()


def refused_login(client: RecordingClient) -> ReasonCode:
    """Connect ``client`` (made with ``connect=False``) to a broker that must refuse it; the
    CONNACK's reason code. paho is stopped from retrying, so the teardown is quick.

    paho reports MQTT 3.1.1 return codes 4 and 5 as the MQTT 5 codes 0x86 and 0x87.
    """
    __tracebackhide__ = True
    client.paho.reconnect_delay_set(min_delay=0.05, max_delay=0.05)
    with pytest.raises(ConnectionError):
        client.connect()
    client.paho.disconnect()
    return client.connack["reason_code"]


def denied_lines(broker: Broker, mark: int, client_ids: Iterable[str]) -> list[str]:
    """The broker's ``Denied ...`` log lines about any of ``client_ids`` since ``mark``: what
    a solution's programs tried that the ACL refused."""
    ids = set(client_ids)
    return [
        line.strip()
        for line in broker.log_lines()[mark:]
        if "Denied" in line and any(f" {cid} " in line for cid in ids)
    ]


def denials(broker: Broker, mark: int, client_id: str, topic: str) -> list[str]:
    """The broker's ``Denied PUBLISH`` lines for this client and topic since ``mark``."""
    needle = f"Denied PUBLISH from {client_id} "
    return [
        line.strip()
        for line in broker.log_lines()[mark:]
        if needle in line and f"'{topic}'" in line
    ]


def how_to_allow(who: MatrixClient, access: str, topic: str) -> str:
    if who.username:
        return f"a `topic {access} {topic}` line under `user {who.username}`"
    return f"a `pattern {access} ...%c...` line that matches {topic} for client id {who.client_id}"
