"""Lesson 02's instruments: QoS-aware payloads, watchers and the packets paho logs.

The chapter (``labs/02_qos.py``) holds the concept and the experiments; this module what
they share:

* :func:`telemetry`, :func:`alarm` — schema-valid payloads as the factory's devices publish them;
* :func:`granted_qos`, :func:`qos2_watcher` — what a SUBACK granted, and a watcher that sees
  each message at its publisher's own QoS;
* :class:`PacketLog` — paho's own account of the packets one client sends and receives;
* :func:`by_qos`, :func:`publish_alarm_until_command` — evidence for a failure message, and
  the press's alarm sent until the controller answers it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import MQTTTimeout, ReceivedMessage, RecordingClient
from mqtt_factory_lab.experiment import json_field


def telemetry(device_id: str, seq: int, value: float = 65.0) -> dict:
    """A temperature reading as the factory's devices publish it (checked against its schema)."""
    return validate(
        "telemetry",
        {
            "ts": time.time(),
            "device_id": device_id,
            "sensor": "temperature",
            "value": value,
            "unit": "C",
            "seq": seq,
        },
    )


def alarm(device_id: str, sensor: str, state: str, value: float) -> dict:
    """An alarm payload (raised above 90, cleared below), checked against its schema."""
    return validate(
        "alarm",
        {
            "ts": time.time(),
            "device_id": device_id,
            "sensor": sensor,
            "state": state,
            "value": value,
            "low": None,
            "high": 90.0,
            "severity": "warning",
            "message": f"{sensor} {value} {'above' if state == 'raised' else 'back below'} 90",
        },
    )


def granted_qos(codes) -> int:
    """The QoS a SUBACK granted (its reason code 0, 1 or 2); fails on a refusal."""
    __tracebackhide__ = True
    assert codes and not codes[0].is_failure, f"the broker refused the subscription: {codes}"
    return codes[0].value


class PacketLog:
    """Paho's own account of the packets it sends and receives (``on_log``), per client."""

    def __init__(self, client: RecordingClient) -> None:
        self.lines: list[str] = []
        client.paho.on_log = lambda _client, _userdata, _level, text: self.lines.append(text)

    def find(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in list(self.lines) if (m := re.search(pattern, line))]


def qos2_watcher(mqtt_client: Callable[..., RecordingClient], topic_filter: str) -> RecordingClient:
    """A client subscribed to ``topic_filter`` at QoS 2, so each message reaches it at the QoS
    its publisher chose; a broker that grants less fails the experiment in one sentence."""
    watcher = mqtt_client()
    granted = granted_qos(watcher.subscribe(topic_filter, qos=2))
    if granted < 2:
        pytest.fail(
            f"The broker granted the lab's watcher QoS {granted}, not 2: messages then arrive "
            f"at QoS ≤ {granted} whatever their publisher chose, and the lesson cannot judge "
            f"them. Allow QoS 2 subscriptions (Mosquitto: max_qos 2).",
            pytrace=False,
        )
    return watcher


def by_qos(messages: list[ReceivedMessage], root: str) -> str:
    """``telemetry/press/temperature at QoS 1 (x12)`` lines, for failure messages."""
    counts: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic.replace(root, "{root}"), m.qos)
        counts[key] = counts.get(key, 0) + 1
    return "\n".join(
        f"    {topic} at QoS {qos} (x{n})" for (topic, qos), n in sorted(counts.items())[:6]
    )


def publish_alarm_until_command(
    mqtt_client: Callable[..., RecordingClient],
    watcher: RecordingClient,
    root: str,
    state: str,
    command: str,
) -> ReceivedMessage | None:
    """Publish the press's temperature alarm (QoS 1) until the controller commands the conveyor;
    None when no command came within 5 s.

    Publishing again covers a controller that is connected but has not subscribed yet.
    """
    press = mqtt_client()

    def answered(m: ReceivedMessage) -> bool:
        return (
            m.topic.startswith(f"{root}/commands/")
            and m.topic.endswith("/conveyor")
            and json_field(m, "command") == command
        )

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        payload = alarm("press", "temperature", state, 97.0)
        press.publish(f"{root}/alarms/press/temperature", payload, 1)
        with contextlib.suppress(MQTTTimeout):
            return watcher.wait_for_message(answered, timeout=0.5)
    return None
