"""What the broker says about the sandbox, heard in a short listen (``sandbox status``).

One MQTT client subscribes to the whole ``factory/#`` tree for a few seconds: the retained
``status`` of every Virtual Factory device (online/offline, its Last Will) and ``state``
of every chocolate machine arrive at once, the live traffic is counted per publisher.
"""

from __future__ import annotations

import collections
import json
import threading
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from mqtt_factory_lab.sandbox import tls as sandbox_tls
from mqtt_factory_lab.sandbox.broker import HOST

ROOT = "factory"
_VF_KINDS = {"telemetry", "alarms", "commands", "state", "status", "events"}


@dataclass
class Seen:
    connected: bool = False
    total: int = 0
    #: messages per publisher: a device id, or ``chocolate`` for the whole line
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: retained status per device (``online``/``offline``)
    statuses: dict[str, str] = field(default_factory=dict)
    #: retained state per chocolate machine
    machines: dict[str, str] = field(default_factory=dict)

    def count_of(self, name: str) -> int:
        if name == "factory":
            return sum(n for who, n in self.counts.items() if who != "chocolate")
        return self.counts.get(name, 0)

    def status_of(self, name: str) -> str:
        if name in self.statuses:
            return self.statuses[name]
        if name == "chocolate" and self.machines:
            online = sum(1 for s in self.machines.values() if s != "offline")
            return f"{online}/{len(self.machines)} machines online"
        if name == "factory" and self.statuses:
            online = sum(1 for s in self.statuses.values() if s == "online")
            return f"{online}/{len(self.statuses)} devices online"
        return "-"

    def record(self, topic: str, payload: bytes) -> None:
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != ROOT:
            return
        self.total += 1
        if levels[1] in _VF_KINDS:
            device = levels[3] if levels[1] == "commands" and len(levels) > 3 else levels[2]
            self.counts[device] += 1
            if levels[1] == "status":
                self.statuses[device] = _field(payload, "status")
        elif len(levels) == 6:
            self.counts["chocolate"] += 1
            if levels[5] == "state":
                self.machines[levels[4]] = _field(payload, "state")


def _field(payload: bytes, name: str) -> str:
    try:
        return str(json.loads(payload).get(name, "?"))
    except (ValueError, AttributeError):
        return "?"


def listen(port: int, seconds: float, mtls: str | None = None) -> Seen:
    """Subscribe to ``factory/#`` on the sandbox's broker for ``seconds`` (under ``--mtls``,
    ``mtls`` is the certificate folder: the listener is the observer)."""
    seen = Seen()
    subscribed = threading.Event()
    lock = threading.Lock()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"sandbox-status-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("observer")  # docker/acl lets the observer read factory/#
    sandbox_tls.apply(client, mtls)  # acl-machines too, by its certificate

    def on_connect(c, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            seen.connected = True
            c.subscribe(f"{ROOT}/#", qos=0)

    def on_message(c, userdata, message):  # type: ignore[no-untyped-def]
        with lock:
            seen.record(message.topic, message.payload)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(HOST, port, keepalive=10)
    except OSError:  # ssl.SSLError too: the status table then says DOES NOT ANSWER
        return seen
    client.loop_start()
    try:
        if subscribed.wait(3):
            threading.Event().wait(seconds)  # the listening window itself
    finally:
        client.disconnect()
        client.loop_stop()
    return seen
