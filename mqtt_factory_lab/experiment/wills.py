"""Lesson 04's instruments: the factory's Last Will, what a dashboard sees, a program that goes silent.

The chapter (``labs/04_lwt.py``) holds the concept and the experiments; this module the
payloads and observations they share:

* :func:`status`, :func:`will_of`, :func:`will_delay` — the status payload and the Last Will
  a factory device registers (MQTT 5: with a will delay interval);
* :func:`says_offline`, :func:`says_offline_on` — message predicates for
  ``wait_for_message``;
* :func:`watch_status`, :func:`dashboard_view`, :func:`assert_late_dashboard_sees_offline`
  — a live dashboard, one opened later, and the verdict on what the later one sees;
* :func:`assert_left_with_disconnect` — the verdict on how a device stopped, from the
  broker's log;
* :data:`SILENT_CLIENT` — a client program reduced to its connection, for ``python -c``;
* :class:`Silence`, :func:`silence_clients`, :func:`silence_devices` — programs (bare clients,
  or a solution's devices) that connected with a short keepalive and were then paused
  together, for :class:`~mqtt_factory_lab.experiment.ahead.Ahead`: one keepalive sweep of the
  broker then serves every experiment that judges them;
* :class:`Hiccup`, :func:`lose_connections` — two MQTT 5 clients with a will delay that lose
  their connection together, one of them coming back at once.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import PROTOCOLS, ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import DeviceHandle, FactoryLauncher, program_env
from mqtt_factory_lab.core.process import ChildProcess
from mqtt_factory_lab.experiment import json_field, unique
from mqtt_factory_lab.experiment.ahead import ModuleClients, seconds_left


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


def assert_left_with_disconnect(broker: Broker, device: DeviceHandle, since: int) -> None:
    """Where the broker's log is readable, fail unless it logged ``device``'s DISCONNECT (within
    5 s) after log position ``since``: a device that said ``offline`` and then died without
    DISCONNECT may still have its will sent."""
    __tracebackhide__ = True
    if LOG not in broker.capabilities:
        return
    try:
        broker.wait_for_log(f"Received DISCONNECT from {re.escape(device.client_id)}", 5, since)
    except AssertionError:
        pytest.fail(
            f"After SIGTERM {device.device_id} published 'offline' but its connection (client "
            f"id {device.client_id}) did not end with DISCONNECT, so the broker may still send "
            f"its will. Call disconnect() before exiting, and connect with the client id the "
            f"lab gives.",
            pytrace=False,
        )


def watch_status(mqtt_client, topic: str) -> RecordingClient:
    """A live subscriber that sees retain flags as published (MQTT 5 retain-as-published)."""
    watcher = mqtt_client()
    watcher.subscribe(topic, qos=2, retain_as_published=True)
    return watcher


# -- Runs that wait on the broker's clock (see mqtt_factory_lab.experiment.ahead) -------------


@dataclass
class Silence:
    """Programs that connected with a keepalive and a Last Will, then were paused (SIGSTOP)
    at one moment: their sockets stay open and nothing more is sent, so only the broker's
    keepalive check can find them gone.

    :ivar dashboard: subscribed to their status topics (retain as published) before the pause.
    :ivar topics: each program's status topic (its will's topic), by MQTT version.
    :ivar programs: the paused programs, by MQTT version.
    :ivar paused_at: ``time.monotonic()`` at the pause; 0 until :meth:`pause`.
    """

    dashboard: RecordingClient
    topics: dict[str, str] = field(default_factory=dict)
    programs: dict[str, ChildProcess] = field(default_factory=dict)
    paused_at: float = 0.0

    def pause(self) -> None:
        """Freeze every program at once (resumed and stopped when the run closes)."""
        for program in self.programs.values():
            program.signal(signal.SIGSTOP)
        self.paused_at = time.monotonic()

    def will(self, protocol: str, budget: float, why: str) -> ReceivedMessage:
        """The ``offline`` will on the ``protocol`` program's status topic, waiting until
        ``budget`` seconds after the pause at most (earlier ones count: judge ``received_at``).

        :raises AssertionError: ``why`` first, when it has not come by then.
        """
        __tracebackhide__ = True
        return self.dashboard.wait_for_message(
            says_offline_on(self.topics[protocol]),
            timeout=seconds_left(self.paused_at, budget),
            why=why,
        )


def silence_clients(stack: contextlib.ExitStack, broker: Broker, keepalive: int) -> Silence:
    """Start a :data:`SILENT_CLIENT` per MQTT version (``frozen-mqtt<version>``, a will that is
    not retained, ``keepalive`` seconds), wait until each is connected, and pause them together.

    Everything is stopped (resumed first) when ``stack`` closes.
    """
    root = f"lab/{uuid.uuid4().hex[:8]}/factory"
    clients = stack.enter_context(contextlib.closing(ModuleClients(broker, "lab-silence")))
    silence = Silence(watch_status(clients, f"{root}/status/#"))
    for protocol in PROTOCOLS:
        device_id = f"frozen-mqtt{protocol}"
        silence.topics[protocol] = topic = f"{root}/status/{device_id}"
        will = json.dumps(status(device_id, "offline", "last-will"))
        program = ChildProcess(
            [sys.executable, "-c", SILENT_CLIENT, unique(device_id), topic, will, str(keepalive)],
            name=device_id,
            env=program_env(broker, root, protocol),
        )
        silence.programs[protocol] = stack.enter_context(contextlib.closing(program.start()))
        stack.callback(program.kill)  # paused: no goodbye to wait for
    for program in silence.programs.values():
        program.wait_for_output("^connected$", timeout=10)
    silence.pause()
    return silence


def silence_devices(
    stack: contextlib.ExitStack, launchers: dict[str, FactoryLauncher], kind: str, keepalive: int
) -> Silence:
    """Start a solution's device of ``kind`` per MQTT version (``<kind>-mqtt<version>``, manifest
    option ``keepalive``), wait for each one's retained ``online``, and pause them together.

    :param launchers: one per MQTT version, each on the same broker and topic root; they
        are closed (their programs resumed and stopped) when ``stack`` closes.
    :raises RoleError: a device that would not start (its message names what it did).
    """
    first = next(iter(launchers.values()))
    clients = stack.enter_context(contextlib.closing(ModuleClients(first.broker, "lab-silence")))
    silence = Silence(watch_status(clients, f"{first.topic_root}/status/#"))
    devices = {}
    for protocol, launcher in launchers.items():  # all start at once, then each is waited for
        stack.enter_context(launcher)
        devices[protocol] = device = launcher.start_device(
            kind, f"{kind}-mqtt{protocol}", options={"keepalive": keepalive}, wait_online=False
        )
        stack.callback(device.kill)  # paused, its connection closed: no goodbye to wait for
    for protocol, device in devices.items():
        launchers[protocol].wait_online(device)
        silence.topics[protocol] = device.topic("status")
        silence.programs[protocol] = device.process
    silence.pause()
    return silence


@dataclass
class Hiccup:
    """Two MQTT 5 clients with a will delay and a longer session lost their connection at
    ``dropped_at``; the ``returning`` one reconnected to its session at once, the ``gone`` one
    never came back.

    :ivar dashboard: subscribed to both status topics before the drop.
    :ivar back: the returning client's new connection (its CONNACK in ``back.connack``).
    """

    dashboard: RecordingClient
    returning: str
    gone: str
    back: RecordingClient
    dropped_at: float

    def will_of_gone(self, budget: float, why: str) -> ReceivedMessage:
        """The message on the ``gone`` client's status topic, waiting until ``budget`` seconds
        after the drop at most. :raises AssertionError: ``why`` first, when none came."""
        __tracebackhide__ = True
        return self.dashboard.wait_for_message(
            self.gone, timeout=seconds_left(self.dropped_at, budget), why=why
        )


def lose_connections(
    stack: contextlib.ExitStack, broker: Broker, returning: str, gone: str, delay: int
) -> Hiccup:
    """Connect the devices ``returning`` and ``gone`` (MQTT 5, session expiry 60 s, a will on
    ``<root>/status/<id>`` with will delay ``delay``, under a topic root of their own), drop
    both sockets at once, and reconnect ``returning`` to its session at once. The clients
    disconnect when ``stack`` closes.
    """
    root = f"lab/{uuid.uuid4().hex[:8]}/factory"
    clients = stack.enter_context(contextlib.closing(ModuleClients(broker, "lab-hiccup")))
    dashboard = clients()
    dashboard.subscribe(f"{root}/status/#", qos=1)
    returning_id = unique(returning)
    devices = []
    for device_id, client_id in ((returning, returning_id), (gone, None)):
        device = clients(client_id, session_expiry=60, clean_start=False, connect=False)
        offline = json.dumps(status(device_id, "offline", "last-will"))
        will_delay(device, f"{root}/status/{device_id}", offline, delay)
        devices.append(device)
    for device in devices:
        device.connect()
    for device in devices:
        device.drop()
    dropped_at = time.monotonic()
    back = clients(returning_id, session_expiry=60, clean_start=False)
    return Hiccup(
        dashboard, f"{root}/status/{returning}", f"{root}/status/{gone}", back, dropped_at
    )
