"""What the factory's programs add to a message when they speak MQTT 5 (lesson 09).

MQTT 3.1.1 carries a topic and bytes; MQTT 5 adds **properties**. The factory uses four:

* every publish says what its payload is: a **user property** ``schema=vf.<schema>/<major>``
  (``vf.telemetry/1``), a **content type** ``application/json`` and the **payload format
  indicator** 1 (UTF-8 text), so a consumer can pick a parser, or refuse a payload, without
  guessing from the topic (:func:`publish_properties`);
* a command carries a **message expiry interval**: a ``stop`` that waited an hour in a
  conveyor's session must not stop it when it comes back (:func:`publish_properties`
  with ``expiry``);
* a setpoint **request** carries a **response topic** and **correlation data**; the device
  answers on that topic with the same correlation data, so the requester can tell its
  answers apart (:func:`request_of`, :func:`reply`).

On MQTT 3.1.1 none of this exists: :func:`publish_properties` returns None and a device
never sees a request (there is no response topic to answer on).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: topic kind -> the user property ``schema`` of its payloads (schemas/<name>.schema.json, v1)
SCHEMA_LABELS = {
    "telemetry": "vf.telemetry/1",
    "alarms": "vf.alarm/1",
    "commands": "vf.command/1",
    "state": "vf.state/1",
    "status": "vf.status/1",
    "events": "vf.event/1",
    "replies": "vf.setpoints_reply/1",
}
CONTENT_TYPE = "application/json"
#: what a request payload asks for, and the only request a device answers today
SETPOINTS = "setpoints"


def publish_properties(
    kind: str | None, protocol: str, *, expiry: int | None = None, correlation: bytes | None = None
) -> Properties | None:
    """The PUBLISH properties of a factory message of ``kind`` (None on MQTT 3.1.1).

    :param kind: the topic kind (``telemetry``...); an unknown kind gets no ``schema``.
    :param expiry: message expiry interval in seconds (commands).
    :param correlation: the correlation data of the request a reply answers.
    """
    if protocol != "5":
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.PayloadFormatIndicator = 1
    properties.ContentType = CONTENT_TYPE
    if kind in SCHEMA_LABELS:
        properties.UserProperty = [("schema", SCHEMA_LABELS[kind])]
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    if correlation is not None:
        properties.CorrelationData = correlation
    return properties


def chocolate_properties(
    message_type: str, payload: dict[str, Any], protocol: str
) -> Properties | None:
    """The PUBLISH properties of a chocolate-line message (None on MQTT 3.1.1): its schema
    ``vf.chocolate_<type>/<version>`` (batch events say their version in ``schema_version``)."""
    properties = publish_properties(None, protocol)
    if properties is not None:
        version = payload.get("schema_version", 1) if message_type == "batch" else 1
        properties.UserProperty = [("schema", f"vf.chocolate_{message_type}/{version}")]
    return properties


@dataclass(frozen=True)
class Request:
    """A request read from a command topic: what is asked, where to answer, how to label it."""

    what: str
    response_topic: str
    correlation: bytes | None


def request_of(payload: bytes, properties: Any) -> Request | None:
    """The request in a message, or None when it is not one (a plain command).

    A request is a JSON object with a ``request`` member, sent with a Response Topic.
    """
    response_topic = getattr(properties, "ResponseTopic", None)
    if not response_topic:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("request"), str):
        return None
    correlation = getattr(properties, "CorrelationData", None)
    return Request(document["request"], response_topic, bytes(correlation) if correlation else None)


def reply(device_id: str, state: str, setpoints: dict[str, float]) -> bytes:
    """A setpoints reply (``schemas/setpoints_reply.schema.json``)."""
    payload = {"ts": time.time(), "device_id": device_id, "state": state, "setpoints": setpoints}
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


def request_properties(response_topic: str, correlation: bytes, expiry: int) -> Properties:
    """The properties of a request: where to answer, the label to answer with, and an expiry
    (a request nobody answered in time is not worth answering later)."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = response_topic
    properties.CorrelationData = correlation
    properties.MessageExpiryInterval = expiry
    properties.PayloadFormatIndicator = 1
    properties.ContentType = CONTENT_TYPE
    properties.UserProperty = [("schema", SCHEMA_LABELS["commands"])]
    return properties
