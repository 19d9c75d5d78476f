"""Lesson 09's instruments: MQTT 5 properties and reason codes, expiry, and shared workers.

The chapter (``labs/09_mqtt5.py``) holds the concept and the experiments; this module what
they build and read:

* :func:`props`, :func:`reason`, :func:`user_properties`, :func:`payload_labels` — PUBLISH
  properties by paho name, a reason code in words, a message's user properties as pairs and
  its three payload labels (PUBACK reason codes come from
  :func:`mqtt_factory_lab.experiment.acl.publish_for_ack`);
* :func:`alarm` and :func:`wire` — a schema-valid press alarm to publish by hand, and the
  bytes a payload goes out as;
* :func:`connect_with_protocol_level` and :func:`is_protocol_refusal` — a CONNECT no client
  library sends (MQTT "6"), and whether what came back refused it;
* :func:`disconnect_with_reason` — leave with a DISCONNECT reason code, and wait for the close;
* :func:`subscribed`, :func:`acknowledging_by_hand` — clients the experiments start with;
* :func:`received_by_now`, :func:`received_by_qos0_marker`, :func:`publish_until_delivered`
  — what a client got once everything queued for it has arrived, or once a QoS 0 marker sent
  after the messages did; messages published until a plain subscriber has them all;
* :func:`suback_problem` and :func:`marked_utf8_problem` — why a SUBACK does not answer each
  filter in order, and why a payload falsely marked UTF-8 was neither refused nor forwarded
  with its mark;
* :func:`subscription_ids` and :func:`split_problem` — which subscriptions delivered a
  message, and why a shared subscription did not give each message to one member;
* :func:`start_expiry_clocks` and :func:`wait_until_expired` — the expiry experiments'
  messages, published together so that the module waits once (and
  :meth:`ExpiryClocks.controller_back`), and the broker's clock, read by fresh subscribers
  to a retained message;
* :func:`label_problem`, :func:`retained_states`, :func:`ask_setpoints`,
  :func:`answer_problem`, :func:`command_expiry_problem` — the solution's devices and
  controller on MQTT 5: their labels, their setpoint answers, their commands' expiry;
* :func:`publish_records` and :class:`SharedWorkers` — chocolate records for data-center
  workers of one share group, what each worker's database holds and the verdict on it.

The brokers (``lab_acl``, ``hardened``) are fixtures of :mod:`mqtt_factory_lab.fixtures.acl`;
the solution's programs on MQTT 5 (``mqtt5_devices``, ``mqtt5_controller``,
``shared_datacenter``) and the expiry clocks are fixtures of
:mod:`mqtt_factory_lab.fixtures.mqtt5`.
"""

from __future__ import annotations

import contextlib
import json
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


def payload_labels(message: ReceivedMessage) -> tuple[list[tuple[str, str]], Any, Any]:
    """What a message says about its payload: its user properties, its content type and its
    payload format indicator (None when absent)."""
    properties = message.properties
    return (
        user_properties(message),
        properties.get("ContentType"),
        properties.get("PayloadFormatIndicator"),
    )


def wire(payload: bytes | str | dict[str, Any]) -> bytes:
    """The bytes :meth:`RecordingClient.publish` sends for ``payload``: a dict as compact JSON."""
    if isinstance(payload, dict):
        return json.dumps(payload, separators=(",", ":")).encode()
    return payload.encode() if isinstance(payload, str) else payload


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


def is_protocol_refusal(answer: bytes) -> bool:
    """Whether ``answer`` (what :func:`connect_with_protocol_level` got back) refuses the
    CONNECT: nothing before the close, or a CONNACK with return code 1 (MQTT 3.1.1 format) or
    reason code 0x84 *Unsupported protocol version* (MQTT 5 format)."""
    if answer == b"":
        return True
    if answer[0] != 0x20:  # not a CONNACK
        return False
    return answer[2:4] == b"\x00\x01" or (len(answer) > 3 and answer[3] == 0x84)


def disconnect_with_reason(client: RecordingClient, code: str) -> None:
    """Leave with an MQTT 5 DISCONNECT carrying the reason code named ``code`` (paho's name:
    ``"Disconnect with will message"``); return once the connection is closed.

    :raises ProcessTimeout: when it is still connected after :data:`PROMPT` seconds.
    """
    client.paho.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, code))
    wait_until(lambda: not client.connected, timeout=PROMPT)


def subscribed(
    connect: Callable[..., RecordingClient], topic: str, qos: int = 0, **options: Any
) -> RecordingClient:
    """A new client (``connect``: the ``mqtt_client`` fixture) subscribed to ``topic`` at
    ``qos``, with the SUBSCRIBE ``options`` of :meth:`RecordingClient.subscribe`
    (``no_local=True``, ``subscription_id=1``...)."""
    client = connect()
    client.subscribe(topic, qos=qos, **options)
    return client


def acknowledging_by_hand(
    connect: Callable[..., RecordingClient], **options: Any
) -> RecordingClient:
    """A client that acknowledges QoS 1 messages only when told (``client.paho.ack(mid, 1)``),
    as a data center does after its commit; ``options`` as ``mqtt_client`` takes them."""
    client = connect(connect=False, **options)
    client.paho.manual_ack_set(True)
    client.connect()
    return client


def publish_until_delivered(
    connect: Callable[..., RecordingClient], topic: str, payloads: Sequence[bytes]
) -> None:
    """Publish ``payloads`` on ``topic`` at QoS 1 from a new client; return once a plain
    subscriber of ``topic`` (subscribed first) got them all, so the broker has handed out
    every message.

    :raises MQTTTimeout: when the plain subscriber misses some.
    """
    plain = subscribed(connect, topic, qos=1)
    publisher = connect()
    for payload in payloads:
        publisher.publish(topic, payload, qos=1)
    plain.wait_for_messages(len(payloads), topic, why="A plain subscription gets every message.")


def received_by_qos0_marker(
    client: RecordingClient, publisher: RecordingClient, what: Any = None
) -> list[ReceivedMessage]:
    """What ``client`` received of ``what`` by the time a QoS 0 marker that ``publisher``
    sends after its messages arrives: no receive maximum holds QoS 0 back (MQTT-3.3.4-10),
    and the broker sends it after whatever it was free to send of the messages before it.

    The marker topic (``lab/marker/<client id>``) is the client's own; it subscribes first.
    """
    marker = f"lab/marker/{client.client_id}"
    client.subscribe(marker, qos=0)
    publisher.publish(marker, b"after the records")
    client.wait_for_message(marker, why="QoS 0 messages are not held back by receive maximum.")
    return client.received(what)


def received_by_now(client: RecordingClient, what: Any = None) -> list[ReceivedMessage]:
    """What ``client`` received (of ``what``, a topic filter or a predicate, as
    :meth:`RecordingClient.received` takes it) once a round trip through the broker
    (:meth:`RecordingClient.sync`) says that everything queued for it earlier has arrived."""
    client.sync()
    return client.received(what)


def suback_problem(filters: Sequence[tuple[str, int]], codes: Sequence[ReasonCode]) -> str | None:
    """Why the SUBACK ``codes`` of one SUBSCRIBE with ``filters`` (filter, QoS asked) do not
    grant each filter, in order, at most the QoS it asked — or None."""
    got = [f"0x{code.value:02X}" for code in codes]
    if len(codes) != len(filters):
        return (
            f"One SUBSCRIBE with {len(filters)} filters gets one reason code per filter "
            f"(MQTT-3.8.4-6); the SUBACK had {got}."
        )
    for (topic, asked), code in zip(filters, codes, strict=True):
        if code.is_failure or code.value > asked:
            return (
                f"The SUBACK's codes come in the order of the filters (MQTT-3.9.3-1), each the "
                f"QoS granted to that filter: at most the QoS asked, less if the broker's "
                f"maximum is lower (MQTT-3.8.4-7; Mosquitto's `max_qos`), or a failure code "
                f">= 0x80 (an ACL plugin's 0x87). Asked {[q for _, q in filters]}, got {got}: "
                f"{topic} asked QoS {asked} and got {reason(code)}."
            )
    return None


def marked_utf8_problem(
    publisher: RecordingClient, code: ReasonCode, subscriber: RecordingClient, topic: str
) -> str | None:
    """Why a payload that is not UTF-8, published on ``topic`` marked as UTF-8 (payload format
    indicator 1) and answered ``code``, was neither refused with 0x99 (and delivered to
    nobody) nor forwarded to ``subscriber`` with its mark — or None.

    A broker MAY check the payload (MQTT 5 §3.3.2.3.2); one that does not must forward the
    mark, so that the receiver can check: then the payload must fail to decode as UTF-8.
    """
    if publisher.connected and not code.is_failure:
        message = subscriber.wait_for_message(topic)
        if message.properties.get("PayloadFormatIndicator") != 1:
            return (
                "A broker that does not check the payload (Mosquitto 2.0 does not) must still "
                "forward the payload format indicator unaltered (MQTT-3.3.2-4): the receiver "
                f"checks. It came with {message.properties.get('PayloadFormatIndicator')!r}."
            )
        try:
            message.payload.decode("utf-8")  # the receiver's check: what it must catch
        except UnicodeDecodeError:
            return None
        return f"The payload on {topic} decoded as UTF-8: the experiment sent the wrong bytes."
    refusal = code if publisher.connected else publisher.disconnects[-1]
    if refusal.value != 0x99:
        return (
            "A broker that checks a payload marked UTF-8 and finds it is not refuses it with "
            f"0x99 Payload format invalid (MQTT 5 §3.3.2.3.2); it answered {reason(refusal)}."
        )
    subscriber.assert_nothing_received(topic, why="A refused payload is delivered to nobody.")
    return None


def subscription_ids(messages: Sequence[ReceivedMessage]) -> dict[str, set[int]]:
    """The subscription identifiers messages came with, by their topic's next-to-last level
    (the device in ``<root>/alarms/<device>/<sensor>``)."""
    ids: dict[str, set[int]] = {}
    for message in messages:
        found = message.properties.get("SubscriptionIdentifier", [])
        ids.setdefault(message.topic.split("/")[-2], set()).update(found)
    return ids


def split_problem(
    group: str, sent: Sequence[bytes], received: Sequence[Sequence[ReceivedMessage]]
) -> str | None:
    """Why the members of the shared subscription ``group`` did not get each payload of
    ``sent`` exactly once between them (``received``: what each member got), or None."""
    shares = [Counter(message.payload for message in got) for got in received]
    together = sum(shares, Counter())
    if together == Counter(sent):
        return None
    missing, doubled = Counter(sent) - together, together - Counter(sent)
    return (
        f"{len(shares)} workers subscribed to {group}: each of the {len(sent)} messages must go "
        f"to exactly one of them (MQTT 5 §4.8.2). They got "
        f"{' and '.join(str(sum(share.values())) for share in shares)}; missing: "
        f"{sorted(missing.elements()) or 'none'}, doubled: {sorted(doubled.elements()) or 'none'}."
    )


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
    fails, with a running worker's output, when a condition is not met in time;
    :meth:`share_problem` is the verdict on a stream the workers should have split.
    """

    def __init__(self, processes: Sequence[RoleProcess], databases: Sequence[Path]) -> None:
        self.processes = list(processes)
        self.databases = [Database(path) for path in databases]

    @property
    def names(self) -> list[str]:
        """The workers' names (their client ids, as the lab started them)."""
        return [process.name for process in self.processes]

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

    def kill_first(self, connect: Callable[..., RecordingClient]) -> str:
        """Kill the first worker (SIGKILL: no DISCONNECT, no goodbye) and end its session as
        an operator (or its session expiry) would; its name.

        A message the broker chose for the dead worker's session waits for it and goes to
        nobody else (MQTT-4.8.2-4, -5); connecting with its client id and a clean start (then
        leaving) ends that session, so the broker sends the stream to the other worker.
        """
        self.processes[0].kill()
        connect(self.names[0]).disconnect()
        return self.names[0]

    def settle(self, ids: list[str], timeout: float = 5.0) -> None:
        """Give each worker up to ``timeout`` seconds to have stored some of ``ids``; return
        either way.

        Once every record is stored somewhere, the other worker's commit may still be on its
        way (a worker without ``$share`` stores them all again): after this wait the verdict
        sees a record stored twice, or the one worker that stored nothing.
        """
        with contextlib.suppress(ProcessTimeout):
            wait_until(lambda: all(self.stored(ids)), timeout)

    def share_problem(self, group: str, ids: list[str]) -> str | None:
        """Why the workers of share group ``group`` did not split the records ``ids`` — one
        stored by both, or a worker that stored none — or None."""
        twice, split = self.twice(ids), self.stored(ids)
        if twice:
            return (
                f"Two data-center workers were started with the share group {group!r}; "
                f"{len(twice)} of {len(ids)} QoS 1 records were stored by both. Subscribing to "
                f"<root>/... directly gives each worker every message; subscribe through "
                f"$share/{group}/<filter> (MQTT 5 shared subscription) so the broker gives each "
                f"record to one worker of the group."
            )
        if not all(split):
            return (
                f"The two workers of group {group!r} should split the stream; one of them stored "
                f"nothing ({split[0]} and {split[1]})."
            )
        return None


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

    def controller_back(self, connect: Callable[..., RecordingClient]) -> list[ReceivedMessage]:
        """Once the clock expired (:func:`wait_until_expired`), so the first alarm's 1 s has
        surely passed, reconnect the controller to its session; the alarms it then got.

        ``connect`` is the ``mqtt_client`` fixture; the alarm with 60 s is waited for.
        """
        wait_until_expired(connect, self.clock)
        back = connect(self.controller_id, clean_start=False, session_expiry=60)
        back.wait_for_message(self.alarms, why="The 60 s alarm was queued in the session.")
        return received_by_now(back, self.alarms)


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


def retained_states(
    client: RecordingClient, root: str, device_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Subscribe ``client`` to the devices' retained state; each device's state, schema-checked."""
    client.subscribe(f"{root}/state/+", qos=1)
    return {
        device_id: validate("state", client.wait_for_message(f"{root}/state/{device_id}").payload)
        for device_id in device_ids
    }


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


def command_expiry_problem(command: ReceivedMessage) -> str | None:
    """Why a controller's command lacks a message expiry interval of at most an hour, or None."""
    expiry = command.properties.get("MessageExpiryInterval")
    if expiry is not None and 0 < expiry <= 3600:
        return None
    return (
        "A command that waits in an absent conveyor's session must not be obeyed hours later: "
        "on MQTT 5 the controller publishes every command with a message expiry interval "
        "(at most an hour; the reference uses 30 s), and the broker deletes the command when "
        f"it expires (MQTT-3.3.2-5). The command on {command.topic} came with "
        f"MessageExpiryInterval={expiry!r}: set properties.MessageExpiryInterval on commands."
    )
