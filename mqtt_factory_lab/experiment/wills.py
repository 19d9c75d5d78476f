"""Lesson 04's instruments: the factory's Last Will, what a dashboard sees, a program that goes silent.

The chapter (``labs/04_lwt.py``) holds the concept and the experiments; this module the
payloads and observations they share:

* :func:`status`, :func:`will_of`, :func:`will_delay` — the status payload and the Last Will
  a factory device registers (MQTT 5: with a will delay interval);
* :func:`says_offline`, :func:`says_offline_on` — message predicates for
  ``wait_for_message``;
* :func:`watch_status`, :func:`dashboard_view`, :func:`assert_late_dashboard_sees_offline`
  — a live dashboard, one opened later, and the verdict on what the later one sees;
* :data:`SILENT_CLIENT` — a client program reduced to its connection, for ``python -c``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.experiment import json_field


def status(device_id: str, value: str, reason: str) -> dict:
    """A status payload as the factory's devices publish it (checked against its schema)."""
    return validate(
        "status", {"ts": time.time(), "device_id": device_id, "status": value, "reason": reason}
    )


def will_of(topic: str, device_id: str, qos: int = 1, retain: bool = True) -> tuple:
    """The factory's Last Will for a device, as ``mqtt_client(will=...)`` takes it."""
    return (topic, json.dumps(status(device_id, "offline", "last-will")), qos, retain)


def says_offline(message: ReceivedMessage) -> bool:
    """Whether a message is a status payload saying ``offline`` (anything else: no)."""
    return json_field(message, "status") == "offline"


def says_offline_on(topic: str) -> Callable[[ReceivedMessage], bool]:
    def offline_on_topic(message: ReceivedMessage) -> bool:
        return message.topic == topic and says_offline(message)

    offline_on_topic.__name__ = f"status 'offline' on {topic}"
    return offline_on_topic


def will_delay(client: RecordingClient, topic: str, payload: str, delay: int) -> None:
    """Give a not yet connected MQTT 5 client a will with a will delay interval."""
    properties = Properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = delay
    client.paho.will_set(topic, payload, qos=1, retain=False, properties=properties)


#: A client program reduced to its connection: connect with a will and a keepalive, then
#: answer the broker until it is paused. ``python -c`` keeps it in this lesson. It reads the
#: broker's login, TLS and transport from the ``VF_*`` variables, as every factory program does.
SILENT_CLIENT = """
import os, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
client_id, will_topic, will_payload, keepalive = sys.argv[1:5]
env = os.environ
version = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}[env["VF_MQTT_PROTOCOL"]]
client = mqtt.Client(
    CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
    transport=env.get("VF_TRANSPORT", "tcp"),
)
if env.get("VF_USERNAME"):
    client.username_pw_set(env["VF_USERNAME"], env.get("VF_PASSWORD"))
if env.get("VF_TLS") or env.get("VF_TLS_CA"):
    client.tls_set(env.get("VF_TLS_CA"), env.get("VF_TLS_CERT"), env.get("VF_TLS_KEY"))
if env.get("VF_TRANSPORT") == "websockets":
    client.ws_set_options(path=env.get("VF_WS_PATH", "/mqtt"))
client.will_set(will_topic, will_payload, qos=1, retain=False)
client.on_connect = lambda *args: print("connected", flush=True)
client.connect(os.environ["VF_BROKER_HOST"], int(os.environ["VF_BROKER_PORT"]), int(keepalive))
client.loop_forever()
"""


def dashboard_view(mqtt_client, topic: str) -> list[ReceivedMessage]:
    """What a dashboard opened now receives at once on ``topic``: the broker's stored copy."""
    late = mqtt_client()
    late.subscribe(topic, qos=1)
    late.sync()
    return late.received(topic)


def assert_late_dashboard_sees_offline(mqtt_client, topic: str, what_happened: str) -> None:
    __tracebackhide__ = True
    stored = dashboard_view(mqtt_client, topic)
    if not (stored and says_offline(stored[-1]) and stored[-1].retain):
        shown = stored[-1].describe() if stored else "nothing"
        pytest.fail(
            f"{what_happened} A dashboard opened afterwards subscribed to {topic} and got "
            f"{shown}. The device's Last Will must be retained, so that it replaces the "
            f"retained 'online': will_set(<status topic>, <offline payload>, qos=1, retain=True) "
            f"before connect().",
            pytrace=False,
        )
    validate("status", stored[-1].payload)


def watch_status(mqtt_client, topic: str) -> RecordingClient:
    """A live subscriber that sees retain flags as published (MQTT 5 retain-as-published)."""
    watcher = mqtt_client()
    watcher.subscribe(topic, qos=2, retain_as_published=True)
    return watcher
