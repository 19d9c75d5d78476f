"""Lesson 09's instruments: MQTT 5 properties and reason codes, expiry, and shared workers.

The chapter (``labs/09_mqtt5.py``) holds the concept and the experiments; this module what
they build and read:

* :func:`props`, :func:`reason`, :func:`user_properties` — PUBLISH properties by paho name,
  a reason code in words, a message's user properties as pairs (PUBACK reason codes come
  from :func:`mqtt_factory_lab.experiment.acl.publish_for_ack`);
* :func:`alarm` — a schema-valid press alarm to publish by hand;
* :func:`connect_with_protocol_level` — a CONNECT no client library sends (MQTT "6");
* :func:`start_expiry_clocks` and :func:`wait_until_expired` — the expiry experiments'
  messages, published together so that the module waits once, and the broker's clock, read
  by fresh subscribers to a retained message;
* :func:`publish_records` and :class:`SharedWorkers` — chocolate records for data-center
  workers of one share group, and what each worker's database holds.

The brokers (``lab_acl``, ``hardened``) are fixtures of :mod:`mqtt_factory_lab.fixtures.acl`.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.core.roles import RoleProcess
from mqtt_factory_lab.core.traceability import MACHINE, Database, record, topic_of

#: how long a broker may take to answer, or close, what these experiments send
PROMPT = 3.0


def props(**values: Any) -> Properties:
    """PUBLISH properties by paho name: ``props(MessageExpiryInterval=5)``."""
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def reason(code: ReasonCode | None) -> str:
    """A reason code as a failure message shows it: ``0x87 Not authorized``."""
    if code is None:
        return "no reason code (paho: success)"
    return f"0x{code.value:02X} {code}"


def user_properties(message: ReceivedMessage) -> list[tuple[str, str]]:
    """The message's user properties, in the order the broker forwarded them."""
    return [tuple(pair) for pair in message.properties.get("UserProperty", [])]


def alarm(state: str = "raised", value: float = 231.0) -> dict[str, Any]:
    """A press-01 temperature alarm (``schemas/alarm.schema.json``), checked against its schema."""
    return validate(
        "alarm",
        {
            "ts": time.time(),
            "device_id": "press-01",
            "sensor": "temperature",
            "state": state,
            "value": value,
            "low": None,
            "high": 220.0,
            "severity": "critical",
            "message": f"temperature {value} C above 220.0 C",
        },
    )


def connect_with_protocol_level(broker: Broker, level: int) -> bytes:
    """Send a CONNECT with protocol level ``level`` on a bare socket; what came back, up to
    the close.

    :raises AssertionError: when the broker neither answers nor closes within :data:`PROMPT`.
    """
    client_id = f"v-{uuid.uuid4().hex[:8]}".encode()
    body = b"\x00\x04MQTT" + bytes([level, 0x02, 0, 30])
    if level == 5:
        body += b"\x00"  # no properties
    body += len(client_id).to_bytes(2, "big") + client_id
    address = (broker.connection.host, broker.connection.port)
    with socket.create_connection(address, timeout=PROMPT) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        received = b""
        while True:
            try:
                chunk = sock.recv(64)
            except TimeoutError:
                raise AssertionError(
                    f"the broker neither answered nor closed a CONNECT with protocol level "
                    f"{level} within {PROMPT}s (it received: {received!r})"
                ) from None
            if not chunk:
                return received
            received += chunk


def wait_until_expired(
    mqtt_client: Callable[..., RecordingClient], topic: str, timeout: float = 6.0
) -> None:
    """Wait until the retained message on ``topic`` has expired: a fresh subscriber no longer
    gets it. The broker's own clock, not a sleep of ours, says when the interval passed.

    :raises AssertionError: when it is still delivered after ``timeout`` seconds.
    """

    def gone() -> bool:
        probe = mqtt_client()
        probe.subscribe(topic, qos=1)
        probe.sync()
        found = probe.received(topic)
        probe.disconnect()
        return not found

    try:
        wait_until(gone, timeout=timeout, interval=0.05)
    except ProcessTimeout:
        raise AssertionError(
            f"The retained message on {topic} had a message expiry interval of 1-2 s and was "
            f"still delivered to a new subscriber {timeout}s later: the broker must delete a "
            f"retained message when it expires (MQTT-3.3.2-5)."
        ) from None


def by_kind(root: str, messages: list[ReceivedMessage]) -> dict[str, list[ReceivedMessage]]:
    """Messages by their first level below ``root`` (``telemetry``, ``state``, ...)."""
    found: dict[str, list[ReceivedMessage]] = {}
    for message in messages:
        found.setdefault(message.topic[len(root) + 1 :].split("/")[0], []).append(message)
    return found


def publish_records(client: RecordingClient, root: str, n: int) -> list[str]:
    """Publish ``n`` chocolate records at QoS 1, round the line's machines; their msg_ids."""
    steps = list(MACHINE)
    sent = []
    for i in range(n):
        step = steps[i % len(steps)]
        kind = ("batch", "quality", "alarm")[i % 3] if step == "s8_packaging" else "batch"
        payload = record(kind, step)
        client.publish(topic_of(root, step, MACHINE[step], kind), payload, qos=1)
        sent.append(payload["msg_id"])
    return sent


class SharedWorkers:
    """Data-center workers of one share group, each with its own database.

    ``rows(ids)`` says, per worker, how many rows it stored of each msg_id; :meth:`wait`
    fails, with a running worker's output, when a condition is not met in time.
    """

    def __init__(self, processes: Sequence[RoleProcess], databases: Sequence[Path]) -> None:
        self.processes = list(processes)
        self.databases = [Database(path) for path in databases]

    def rows(self) -> list[Counter[str]]:
        """Per worker, how many rows of ``mqtt_messages`` hold each msg_id."""
        return [database.msg_ids() for database in self.databases]

    def stored(self, ids: list[str]) -> list[int]:
        """Per worker, how many of ``ids`` it stored (a row each)."""
        return [sum(rows[i] for i in ids) for rows in self.rows()]

    def twice(self, ids: list[str]) -> list[str]:
        """The msg_ids of ``ids`` stored more than once across the workers."""
        together = sum(self.rows(), Counter())
        return [i for i in ids if together[i] > 1]

    def lost(self, ids: list[str]) -> list[str]:
        """The msg_ids of ``ids`` no worker stored."""
        together = sum(self.rows(), Counter())
        return [i for i in ids if together[i] == 0]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition``; else fail with what the workers printed.

        :raises AssertionError: "the data-center workers did not {what} within {timeout}s",
            and a running worker's output (the first one's when none runs).
        """
        try:
            wait_until(condition, timeout, interval=0.05)
        except ProcessTimeout:
            running = [w for w in self.processes if w.is_running()]
            target = running[0] if running else self.processes[0]
            raise AssertionError(
                target.describe_failure(f"the data-center workers did not {what} within {timeout}s")
            ) from None


@dataclass
class ExpiryClocks:
    """The messages of lesson 09's two expiry experiments, published together.

    A broker counts expiry in whole seconds, so each experiment waits a second or two for
    its clock; started together (:func:`start_expiry_clocks`, once per module), the second
    experiment finds its interval already passed and the module pays one wait.
    """

    #: the topic of the two alarms queued for the absent controller
    alarms: str
    #: the client id of the controller's persistent session (expiry 60 s)
    controller_id: str
    #: a retained message with a 2 s expiry, published after the alarms: once a new
    #: subscriber no longer gets it, the first alarm's 1 s has surely passed
    clock: str
    #: the retained state with a 1 s expiry
    state: str
    #: that state as a subscriber got it at once, before it expired
    early_state: ReceivedMessage


def start_expiry_clocks(connect: Callable[..., RecordingClient], root: str) -> ExpiryClocks:
    """Queue two alarms for an absent controller under ``root`` — one with a message expiry
    interval of 1 s, one with 60 s — then publish a retained clock (2 s) and a retained state
    (1 s) that a subscriber reads at once.

    ``connect(client_id=None, **options)`` returns a connected MQTT 5 client (options as
    :class:`RecordingClient` takes them); every client it made is disconnected here.
    """
    alarms, clock, state = (
        f"{root}/alarms/press-01/temperature",
        f"{root}/lab/clock",
        f"{root}/state/press-01",
    )
    controller_id = f"controller-{uuid.uuid4().hex[:8]}"
    controller = connect(controller_id, clean_start=False, session_expiry=60)
    controller.subscribe(alarms, qos=1)
    controller.disconnect()
    press = connect()
    press.publish(alarms, alarm("raised", 231.0), qos=1, properties=props(MessageExpiryInterval=1))
    press.publish(alarms, alarm("raised", 240.0), qos=1, properties=props(MessageExpiryInterval=60))
    press.publish(clock, b"tick", qos=1, retain=True, properties=props(MessageExpiryInterval=2))
    press.publish(
        state, {"state": "running"}, qos=1, retain=True, properties=props(MessageExpiryInterval=1)
    )
    press.disconnect()
    early = connect()
    try:
        early.subscribe(state, qos=1)
        message = early.wait_for_message(
            state, why="A new subscriber gets the retained state while it has not expired."
        )
    finally:
        early.disconnect()
    return ExpiryClocks(alarms, controller_id, clock, state, message)


# -- the solution's programs ------------------------------------------------------------


def label_problem(kind: str, message: ReceivedMessage, label: str) -> str | None:
    """Why a device's ``kind`` message lacks its MQTT 5 labels — the user property
    ``schema=<label>`` and the content type ``application/json`` — or None."""
    if ("schema", label) not in user_properties(message):
        return (
            f"On MQTT 5 every factory payload says which schema it follows, as the user "
            f"property schema={label} on {kind} messages; {message.topic} came with user "
            f"properties {user_properties(message)}. Publish with "
            f"properties.UserProperty = [('schema', '{label}')]."
        )
    if message.properties.get("ContentType") != "application/json":
        return (
            f"Factory payloads are JSON: publish them with the content type "
            f"application/json. {message.topic} came with "
            f"{message.properties.get('ContentType')!r}."
        )
    return None


def ask_setpoints(
    asker: RecordingClient, root: str, device_ids: Sequence[str], response_topic: str
) -> dict[str, bytes]:
    """Send each device ``{"request": "setpoints"}`` on its command topic, all before any
    answer, with ``response_topic`` and a correlation label of its own; the labels by device."""
    labels = {device_id: f"{device_id}:{uuid.uuid4().hex}".encode() for device_id in device_ids}
    for device_id, label in labels.items():
        asker.publish(
            f"{root}/commands/controller/{device_id}",
            validate("setpoints_request", {"request": "setpoints"}),
            qos=1,
            properties=props(
                ResponseTopic=response_topic, CorrelationData=label, MessageExpiryInterval=30
            ),
        )
    return labels


def answer_problem(
    answer: ReceivedMessage, labels: dict[str, bytes], states: dict[str, dict[str, Any]]
) -> str | None:
    """Why a setpoints reply does not answer its own request — no correlation data, another
    device's label, setpoints other than the device's retained state — or None."""
    reply = validate("setpoints_reply", answer.payload)
    label = bytes.fromhex(answer.properties.get("CorrelationData", ""))
    if not label:
        return (
            f"{reply['device_id']} answered on the response topic without Correlation Data: "
            "with two requests in flight on one response topic the controller cannot tell "
            "which request this answers. Copy the request's properties.CorrelationData into "
            "the reply's properties."
        )
    asked = next((d for d, sent in labels.items() if sent == label), None)
    if asked != reply["device_id"]:
        return (
            f"The answer labelled {label!r} came from {reply['device_id']}, but that label was "
            f"sent to {asked}: answer each request with *its own* Correlation Data."
        )
    if reply["setpoints"] != states[asked]["setpoints"]:
        return (
            f"{asked} answered setpoints {reply['setpoints']} but its retained state says "
            f"{states[asked]['setpoints']}."
        )
    return None
