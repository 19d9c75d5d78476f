"""Lesson 02's instruments: QoS-aware payloads, watchers and the packets paho logs.

The chapter (``labs/02_qos.py``) holds the concept and the experiments; this module what
they share:

* :func:`telemetry`, :func:`alarm` — schema-valid payloads as the factory's devices publish them;
* :func:`granted_qos`, :func:`qos2_watcher` — what a SUBACK granted, and a watcher that sees
  each message at its publisher's own QoS;
* :class:`PacketLog` — paho's own account of the packets one client sends and receives;
* :func:`by_qos`, :func:`publish_alarm_until_command` — evidence for a failure message, and
  the press's alarm sent until the controller answers it;
* :func:`unacknowledged_alarm_sent_again`, :func:`away_while_the_press_publishes` — the two
  session scenarios several broker experiments judge;
* :func:`record_press` (:class:`PressRun`) — the solution's press as a QoS 2 watcher saw it
  from its start, recorded once for the experiments that judge its QoS.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import MQTTTimeout, ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.solution import ManifestError
from mqtt_factory_lab.experiment import json_field, unique


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
        pytest.fail(_less_than_qos2(granted), pytrace=False)
    return watcher


def _less_than_qos2(granted: int) -> str:
    return (
        f"The broker granted the lab's watcher QoS {granted}, not 2: messages then arrive "
        f"at QoS ≤ {granted} whatever their publisher chose, and the lesson cannot judge "
        f"them. Allow QoS 2 subscriptions (Mosquitto: max_qos 2)."
    )


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
    command: str | None,
) -> ReceivedMessage | None:
    """Publish the press's temperature alarm (QoS 1) until the controller sends the conveyor
    ``command`` (None: any message on its command topics); None when none came within 5 s.

    Publishing again covers a controller that is connected but has not subscribed yet.
    """
    press = mqtt_client()

    def answered(m: ReceivedMessage) -> bool:
        return (
            m.topic.startswith(f"{root}/commands/")
            and m.topic.endswith("/conveyor")
            and (command is None or json_field(m, "command") == command)
        )

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        payload = alarm("press", "temperature", state, 97.0)
        press.publish(f"{root}/alarms/press/temperature", payload, 1)
        with contextlib.suppress(MQTTTimeout):
            return watcher.wait_for_message(answered, timeout=0.5)
    return None


def unacknowledged_alarm_sent_again(
    mqtt_client: Callable[..., RecordingClient],
    session_client: Callable[..., RecordingClient],
    topic_root: str,
    protocol: str,
) -> tuple[ReceivedMessage, ReceivedMessage]:
    """One QoS 1 alarm received, never acknowledged, the session resumed: both deliveries.

    ``session_client(client_id, protocol, manual_ack=False)`` makes a persistent-session client
    (lesson 02's fixture). :raises MQTTTimeout: when the broker sent nothing again.
    """
    topic = f"{topic_root}/alarms/press/temperature"
    client_id = unique("qos1-dup")
    subscriber = session_client(client_id, protocol, manual_ack=True)
    subscriber.subscribe(topic, qos=1)

    sent = alarm("press", "temperature", "raised", 97.5)
    mqtt_client(protocol=protocol).publish(topic, sent, qos=1)
    first = subscriber.wait_for_message(topic, why="The alarm reaches its QoS 1 subscriber.")
    # It never acknowledges (manual ack, no ack() call) and leaves; its session stays.
    subscriber.disconnect()

    again = session_client(client_id, protocol)
    second = again.wait_for_message(
        topic,
        queued=True,
        why=f"QoS 1 is at-least-once: the broker keeps a message until the subscriber's PUBACK "
        f"and sends it again when the session resumes (MQTT-4.4.0-1). The subscriber received "
        f"the alarm on {topic} but left before acknowledging it; after reconnecting to its "
        f"persistent session it got nothing.",
    )
    assert validate("alarm", second.payload) == sent, "The redelivery is the same message."
    return first, second


def away_while_the_press_publishes(
    mqtt_client: Callable[..., RecordingClient],
    session_client: Callable[..., RecordingClient],
    topic_root: str,
    protocol: str,
) -> tuple[RecordingClient, list[float]]:
    """A persistent-session observer leaves; QoS 0 telemetry and QoS 1 alarms are published;
    it returns. Returns the returned client (after a round trip) and the alarm values sent."""
    client_id = unique("observer")
    observer = session_client(client_id, protocol)
    observer.subscribe(f"{topic_root}/telemetry/#", qos=1)
    observer.subscribe(f"{topic_root}/alarms/#", qos=1)
    observer.disconnect()  # a clean goodbye: the persistent session stays on the broker

    press = mqtt_client(protocol=protocol)
    values = [91.0, 92.5, 94.0, 95.5]
    for seq, value in enumerate(values):
        press.publish(
            f"{topic_root}/telemetry/press/temperature", telemetry("press", seq, value), 0
        )
        state = "raised" if seq % 2 == 0 else "cleared"
        press.publish(
            f"{topic_root}/alarms/press/temperature", alarm("press", "temperature", state, value), 1
        )
    press.sync()  # the broker has handled every publish before the observer returns

    back = session_client(client_id, protocol)
    assert back.connack["session_present"], (
        "A client that reconnects with clean start off finds its session (CONNACK "
        "session-present = 1): its subscriptions and the messages queued for it."
    )
    return back, values


# -- the solution's press, recorded once --------------------------------------------------


@dataclass
class PressRun:
    """The solution's press (anomalies on) as a QoS 2 watcher of ``{root}/#`` saw it from its
    start until its first readings, status, state and alarm had come (then it is stopped).

    A field that says what went wrong is ``""`` (or empty) when nothing did.

    :ivar readings: its first 4 readings; ``no_readings`` why they did not come.
    :ivar missing: for each of status, state, alarms that never came, why.
    :ivar messages: everything the watcher recorded before the press was stopped.
    """

    root: str
    device_id: str = "press-01"
    watcher_problem: str = ""
    not_started: str = ""
    readings: list[ReceivedMessage] = field(default_factory=list)
    no_readings: str = ""
    missing: list[str] = field(default_factory=list)
    messages: list[ReceivedMessage] = field(default_factory=list)

    def alarms_state_status(self) -> list[ReceivedMessage]:
        """What it published on its status, state and alarms topics."""
        base = f"{self.root}/{{}}/{self.device_id}"
        return [
            m
            for m in self.messages
            if m.topic in (base.format("status"), base.format("state"))
            or m.topic.startswith(base.format("alarms") + "/")
        ]


def record_press(
    launcher: FactoryLauncher, client: Callable[[str], RecordingClient], device_id: str = "press-01"
) -> PressRun:
    """Start the solution's press (anomalies on) under ``launcher`` with a QoS 2 watcher
    subscribed first, wait for 4 readings (5 s) and for its status, state and an alarm (8 s
    each, as the experiments did alone), then stop it (:class:`PressRun`).

    :param client: ``client(name)``, a connected MQTT 5 client that outlives the call.
    """
    root = launcher.topic_root
    run = PressRun(root, device_id)
    watcher = client("qos2")
    codes = watcher.subscribe(f"{root}/#", qos=2)
    if not codes or codes[0].is_failure or codes[0].value < 2:
        run.watcher_problem = (
            _less_than_qos2(codes[0].value)
            if codes and not codes[0].is_failure
            else f"the broker refused the subscription: {codes}"
        )
        return run
    try:
        press = launcher.start_device("press", device_id, anomaly=True)
    except (RoleError, ManifestError) as error:
        run.not_started = str(error)
        return run
    try:
        run.readings = watcher.wait_for_messages(
            4,
            f"{root}/telemetry/{device_id}/+",
            why=f"A running device publishes telemetry on {root}/telemetry/<device>/<sensor> "
            f"several times a second.",
        )
    except MQTTTimeout as error:
        run.no_readings = str(error)
    for kind, topic_filter in (
        ("status", press.topic("status")),
        ("state", press.topic("state")),
        ("alarms", f"{press.topic('alarms')}/+"),
    ):
        try:
            watcher.wait_for_message(
                topic_filter,
                timeout=8,
                why=f"A device publishes its {kind} on {topic_filter} (alarms: within seconds "
                f"when started with the anomaly option).",
            )
        except MQTTTimeout as error:
            run.missing.append(str(error))
    run.messages = watcher.received()  # before the stop: its goodbye is not judged here
    press.process.signal(signal.SIGTERM)  # it winds down on its own; the launcher reaps it
    watcher.disconnect()
    return run


@dataclass
class ControllerRun:
    """The solution's controller (persistent session) before and after a restart.

    :ivar first_command: the stop it sent the conveyor, live, for the press's raised alarm
        (as a QoS 2 watcher of ``{root}/commands/#`` saw it); None when none came in 5 s.
    :ivar acted_after_restart: it sent the conveyor a start, within 3 s of its restart, for
        the alarm that cleared while it was stopped.
    :ivar log_mark: the broker's log position before it started (None: no log).
    """

    root: str
    controller_id: str
    log_mark: int | None = None
    watcher_problem: str = ""
    not_started: str = ""
    first_command: ReceivedMessage | None = None
    acted_after_restart: bool = False


def record_controller_away(
    launcher: FactoryLauncher,
    client: Callable[..., RecordingClient],
    rule: str,
    *,
    log_mark: int | None = None,
) -> ControllerRun:
    """Start the solution's controller with ``rule`` and a persistent session, publish the
    press's alarm until it stops the conveyor, stop it, clear the alarm while it is away,
    start it again with the same client id and wait 3 s for it to start the conveyor; then
    stop it and end its session (:class:`ControllerRun`).

    :param client: ``client(name, client_id=None, protocol="5")``, a connected client.
    """
    root = launcher.topic_root
    run = ControllerRun(root, unique("controller"), log_mark)
    watcher = client("qos2")
    codes = watcher.subscribe(f"{root}/commands/#", qos=2)
    if not codes or codes[0].is_failure or codes[0].value < 2:
        run.watcher_problem = _less_than_qos2(codes[0].value if codes else 0)
        return run

    def start() -> Any:
        return launcher.start_role(
            "controller", run.controller_id, options={"rules": rule}, session="persistent"
        )

    try:
        controller = start()
    except (RoleError, ManifestError) as error:
        run.not_started = str(error)
        return run
    # First, live: the controller is subscribed and acts on the press's alarm.
    run.first_command = publish_alarm_until_command(client, watcher, root, "raised", "stop")
    controller.stop()
    if run.first_command is None:
        return run
    # While it is away, the alarm clears; the broker must keep that for it.
    cleared = alarm("press", "temperature", "cleared", 80.0)
    client("press").publish(f"{root}/alarms/press/temperature", cleared, qos=1)
    try:
        restarted = start()
    except (RoleError, ManifestError) as error:
        run.not_started = str(error)
        return run

    def started_conveyor(m: ReceivedMessage) -> bool:
        return m.topic.endswith("/conveyor") and json_field(m, "command") == "start"

    try:
        watcher.wait_for_message(started_conveyor, timeout=3)
        run.acted_after_restart = True
    except MQTTTimeout:
        pass
    finally:
        # Its persistent session would outlive the run on the shared broker: end it.
        restarted.stop()
        client("end", client_id=run.controller_id, protocol=launcher.protocol).disconnect()
        watcher.disconnect()
    return run
