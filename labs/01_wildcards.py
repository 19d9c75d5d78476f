"""Lesson 01 — Topics and wildcards: asking the factory the right question.

Every MQTT message is published to a **topic name**, a string of levels
separated by ``/``. A subscriber does not name topics; it gives a **topic
filter**, and the broker hands it every message whose topic the filter
matches. The factory's topics form a tree (the seed's "Topic Structure")::

    factory/telemetry/<device>/<sensor>     readings, QoS 0
    factory/alarms/<device>/<sensor>        raised / cleared, QoS 1
    factory/commands/<publisher>/<device>   start, stop, reset, set, QoS 1
    factory/state/<device>                  running / stopped / fault, retained
    factory/status/<device>                 online / offline, retained

The kind of message comes first and the device second, so one filter gets
"every alarm of every device" and another "everything about the press". A
filter may use two wildcards (MQTT 3.1.1 §4.7, MQTT 5 §4.7):

* ``+`` matches **exactly one level**, whatever it holds (even an empty one),
  at any position: ``factory/telemetry/+/temperature`` gets the temperature of
  every device, and not ``factory/telemetry/press/pressure``.
* ``#`` matches **any number of levels, including none**, and only as the last
  level: ``factory/alarms/#`` gets every alarm — and a message published to
  ``factory/alarms`` itself (the parent).
* A wildcard is a whole level: ``fac+``, ``#x`` and ``factory/#/x`` are not
  filters. Paho refuses to send them; a broker that receives one refuses it
  (MQTT 3.1.1: a protocol violation, the connection is closed; MQTT 5: a
  DISCONNECT with a reason code such as 0x81 *Malformed Packet*, or a SUBACK
  with 0x8F *Topic Filter invalid*).
* Wildcards are for subscribers only: a PUBLISH whose topic name contains
  ``+`` or ``#`` is refused (MQTT 3.1.1 §3.3.2.1, MQTT 5 §3.3.2.1).
* Topics starting with ``$`` (``$SYS/...``, the broker's own statistics) are
  matched by neither a leading ``#`` nor a leading ``+`` (§4.7.2): a client
  that subscribes to ``#`` does not drown in broker internals. Ask for them
  by name: ``$SYS/#``.
* Levels are compared exactly: ``factory/state/Press`` is not
  ``factory/state/press``, and ``factory//x`` has an empty second level that
  ``factory/+/x`` matches.

Pitfalls:

* ``factory/telemetry/#`` for "every temperature": ``#`` takes every level
  below, so pressures, speeds and humidities come too. Fix one level and leave
  another open with ``+``.
* ``factory/+/robot_arm/#`` for "everything about the robot arm" (the seed's
  own exercise) misses its commands: in ``commands/<publisher>/<device>`` the
  device is the *third* level. Commands to the robot arm need their own
  filter, ``factory/commands/+/robot_arm``.
* A device subscribed to ``factory/commands/#`` receives every machine's
  commands; obeying them stops the press when someone stops the conveyor. A
  device subscribes to ``factory/commands/+/<its id>`` — any publisher, only
  its own commands.

Try it (the seed's exercise 1), with the lab's factory running
(``python -m sim.run_all --anomaly``)::

    python -m sim.cli sub --topic 'factory/telemetry/+/temperature' --qos 0
    python -m sim.cli sub --topic 'factory/+/robot_arm/#' --qos 1
    python -m sim.cli sub --topic 'factory/commands/+/robot_arm' --qos 1

Your programs in this lesson: ``[roles.device]`` of your manifest (started once
per kind, with the seed's names as ``{device_id}``: press, conveyor, robot_arm,
oven, packer, environment; with the ``anomaly`` option, so alarms happen) and
a ``[filters]`` table with one topic filter per question of
:data:`QUESTIONS` (write the topic root as ``{root}``)::

    [filters]
    every_temperature = "{root}/telemetry/+/temperature"

Each filter is subscribed while the factory runs and must get exactly the
topics that answer its question. Your devices must publish on exactly the
tree above and obey only their own commands — and survive the commands they do not
understand: a command is input from the network (anyone allowed to publish there may send an
unknown command or a payload that is not JSON), so a device rejects it (a
``command_rejected`` event on ``factory/events/<device>``, a log line) and keeps running.

Run it: ``pytest labs/01_wildcards.py -v`` (``-m broker`` for the broker's
rules only, ``-m solution --solution PATH`` to grade a solution).
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.brokers.mosquitto_log import subscriptions
from mqtt_factory_lab.contract import PayloadError, validate, validate_message
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import DeviceHandle
from mqtt_factory_lab.core.solution import ManifestError
from mqtt_factory_lab.core.wire import open_stream
from mqtt_factory_lab.experiment import json_field
from mqtt_factory_lab.fixtures.factory import or_fail
from mqtt_factory_lab.lint_topics import lint_topic

pytestmark = [pytest.mark.lesson(1)]


#: the devices of the seed's factory, by the names its topics use (device id = kind)
SEED_DEVICES = ("press", "conveyor", "robot_arm", "oven", "packer", "environment")
#: the second level of every topic (the kind of message) and the levels that follow it
TREE = {
    "telemetry": ("<device>", "<sensor>"),
    "alarms": ("<device>", "<sensor>"),
    "commands": ("<publisher>", "<device>"),
    "state": ("<device>",),
    "status": ("<device>",),
    "events": ("<device>",),
}
#: what a device publishes (commands come from controllers and dashboards)
DEVICE_KINDS = ("telemetry", "alarms", "state", "status", "events")


def levels(topic: str, root: str) -> list[str]:
    """The levels of ``topic`` below ``root`` (``[]`` for a topic outside it)."""
    if not topic.startswith(root + "/"):
        return []
    return topic[len(root) + 1 :].split("/")


# -- the broker's matching rules --------------------------------------------------------


def topics_matched(
    mqtt_client: Callable[..., RecordingClient],
    topic_filter: str,
    topics: list[str],
    protocol: str,
) -> set[str]:
    """Subscribe ``topic_filter``, publish one message to each of ``topics``, return those received.

    The publishes are acknowledged (QoS 1) before the subscriber's own round trip through
    the broker (:meth:`RecordingClient.sync`), so everything the broker routed has arrived.
    """
    subscriber = mqtt_client(protocol=protocol)
    subscriber.subscribe(topic_filter, qos=1)
    publisher = mqtt_client(protocol=protocol)
    for topic in topics:
        publisher.publish(topic, topic.encode(), qos=1)
    subscriber.sync()
    # Only live deliveries (RETAIN=0) answer the question: a stored message the broker sends
    # at subscribe time is the retained lesson's (03), and is judged there, once.
    return {m.topic for m in subscriber.received() if not m.retain}


def explain_match(
    topic_filter: str, rule: str, expected: set[str], got: set[str], root: str
) -> str:
    """The rule, the filter, and what was expected, missing and extra (a few topics each)."""

    def short(topics: set[str], limit: int = 6) -> str:
        names = sorted(t.replace(root, "{root}") for t in topics)
        more = f" … (+{len(names) - limit} more)" if len(names) > limit else ""
        return (", ".join(names[:limit]) + more) or "nothing"

    return (
        f"{rule}\n  filter:   {topic_filter.replace(root, '{root}')}\n"
        f"  expected: {short(expected)}"
        + (f"\n  missing:  {short(expected - got)}" if expected - got else "")
        + (f"\n  extra:    {short(got - expected)}" if got - expected else "")
    )


@dataclass(frozen=True)
class MatchCase:
    """A filter (``{root}`` = the test's topic root, ``{tail}`` = the root without its first
    level), the topics it must match and those it must miss (relative to the root; ``""`` is
    the root topic itself)."""

    topic_filter: str
    matches: tuple[str, ...]
    misses: tuple[str, ...]
    rule: str


def _case(id_: str, case: MatchCase) -> object:
    return pytest.param(case, id=id_)


PLUS_CASES = [
    _case(
        "every-temperature",
        MatchCase(
            "{root}/telemetry/+/temperature",
            ("telemetry/press/temperature", "telemetry/oven/temperature"),
            (
                "telemetry/press/pressure",
                "telemetry/temperature",
                "telemetry/line1/press/temperature",
                "telemetry/press/temperature/raw",
            ),
            "`+` matches exactly one level: one device name between telemetry and temperature, "
            "never none and never two.",
        ),
    ),
    _case(
        "last-level",
        MatchCase(
            "{root}/state/+",
            ("state/press", "state/oven"),
            ("state", "state/press/extra", "status/press"),
            "`+` as the last level matches one level, not the parent and not deeper levels.",
        ),
    ),
    _case(
        "two-pluses",
        MatchCase(
            "{root}/+/press/+",
            ("telemetry/press/temperature", "alarms/press/pressure"),
            ("state/press", "telemetry/oven/temperature", "commands/dashboard/press"),
            "Each `+` matches one level of its own; the levels between them must match exactly.",
        ),
    ),
    _case(
        "first-level",
        MatchCase(
            "+/{tail}/status/press",
            ("status/press",),
            ("status/oven", "state/press"),
            "`+` may stand at any position, the first one included.",
        ),
    ),
]

HASH_CASES = [
    _case(
        "every-level-below",
        MatchCase(
            "{root}/telemetry/#",
            (
                "telemetry/press/temperature",
                "telemetry/press/pressure",
                "telemetry/oven/temperature/raw",
            ),
            ("alarms/press/temperature", "telemetry-old/press/temperature"),
            "`#` matches every level below it, however many: a whole subtree.",
        ),
    ),
    _case(
        "whole-tree",
        MatchCase(
            "{root}/#",
            ("", "state/press", "telemetry/press/temperature"),
            (),
            "`{root}/#` gets the whole tree, the root topic itself included (factory/# gets "
            "factory).",
        ),
    ),
    _case(
        "includes-the-parent",
        MatchCase(
            "{root}/alarms/#",
            ("alarms", "alarms/press/temperature"),
            ("alarmsx", "state/press"),
            "`#` also matches the parent level itself: factory/alarms/# gets factory/alarms.",
        ),
    ),
    _case(
        "seed-robot-arm-filter",
        MatchCase(
            "{root}/+/robot_arm/#",
            (
                "telemetry/robot_arm/joint_temp",
                "alarms/robot_arm/cycle_time",
                "state/robot_arm",
                "status/robot_arm",
            ),
            ("commands/dashboard/robot_arm", "state/press"),
            "`+` then `#`: the robot arm as the second level, anything (or nothing) below. A "
            "command to the robot arm has it as the third level, so this filter misses it.",
        ),
    ),
]

EXACT_CASES = [
    _case(
        "case-sensitive",
        MatchCase(
            "{root}/state/press",
            ("state/press",),
            ("state/Press", "State/press", "state/PRESS"),
            "Topic levels are compared byte for byte: Press is not press.",
        ),
    ),
    _case(
        "empty-level-is-a-level",
        MatchCase(
            "{root}/telemetry/+/temperature",
            ("telemetry//temperature",),
            ("telemetry/temperature",),
            "An empty level is still a level: telemetry//temperature has three, and `+` "
            "matches the empty one.",
        ),
    ),
    _case(
        "trailing-slash",
        MatchCase(
            "{root}/state/+",
            ("state/press",),
            ("state/press/",),
            "A trailing slash adds an empty level: state/press/ is not state/press.",
        ),
    ),
]


def _check_case(mqtt_client, topic_root: str, case: MatchCase, protocol: str) -> None:
    __tracebackhide__ = True
    topic_filter = case.topic_filter.format(root=topic_root, tail=topic_root.split("/", 1)[1])
    expected = {topic_root if t == "" else f"{topic_root}/{t}" for t in case.matches}
    published = [
        topic_root if t == "" else f"{topic_root}/{t}" for t in (*case.matches, *case.misses)
    ]
    got = topics_matched(mqtt_client, topic_filter, published, protocol)
    assert got == expected, explain_match(topic_filter, case.rule, expected, got, topic_root)


@pytest.mark.broker
@pytest.mark.parametrize("case", PLUS_CASES)
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-3.3.2-3")
def test_plus_matches_exactly_one_level_at_any_position(mqtt_client, topic_root, case, protocol):
    _check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.parametrize("case", HASH_CASES)
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-3.3.2-3")
def test_hash_matches_every_level_below_including_the_parent(
    mqtt_client, topic_root, case, protocol
):
    _check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.parametrize("case", EXACT_CASES)
@pytest.mark.spec("MQTT-3.3.2-3")
def test_levels_match_exactly_case_and_empty_levels_included(
    mqtt_client, topic_root, case, protocol
):
    _check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-4.7.2-1")
def test_dollar_topics_are_not_matched_by_a_leading_wildcard(
    mqtt_client, topic_root, protocol, broker_capabilities
):
    # Every broker is judged, $SYS or not: the experiment offers a $-topic of its own and
    # watches for any $-topic at all (a broker's internal $MQTT/…, $JS/… count too).
    own = f"$lab{topic_root.split('/')[1]}/probe"
    everything = mqtt_client(protocol=protocol)
    everything.subscribe("#", qos=0)
    everything.subscribe("+/probe", qos=0)
    if broker_capabilities.has("sys"):
        everything.subscribe("+/broker/#", qos=0)
    everything.sync()
    insider = mqtt_client(protocol=protocol)
    with contextlib.suppress(ConnectionError, AssertionError):
        # a broker may refuse a client's $-topic; the wildcards are judged all the same
        insider.subscribe(f"{own.split('/')[0]}/#", qos=0, timeout=2)
        insider.publish(own, b"for named subscribers only", qos=0, timeout=2)
        insider.wait_for_message(own, timeout=1)
    everything.sync()
    leaked = sorted({m.topic for m in everything.received() if m.topic.startswith("$")})

    offered = [f"{own} (published by the experiment)"] if insider.received(own) else []
    if broker_capabilities.has("sys"):
        offered.append(f"$SYS ({broker_capabilities.items['sys'].detail})")
    assert not leaked, (
        f"A filter that starts with a wildcard (#, +/probe, +/broker/#) must not match topics "
        f"that start with $ (MQTT-4.7.2-1): they are the broker's own, asked for by name. "
        f"$-topics here: {', '.join(offered) or 'none the broker showed by name'}. The "
        f"wildcard subscriber got: {', '.join(leaked[:5])}"
    )


# A filter or topic name that paho refuses to send can only reach the broker as hand-made
# bytes. These few lines build the three packets needed (MQTT 3.1.1 §3.1/§3.3/§3.8, MQTT 5
# the same sections plus an empty property block) and read the broker's answer.
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14
PACKET_NAMES = {CONNACK: "CONNACK", PUBACK: "PUBACK", SUBACK: "SUBACK", DISCONNECT: "DISCONNECT"}


class RawConnection:
    """A connection speaking MQTT byte by byte, to send what a correct library refuses to. It
    logs in and uses TLS or WebSockets as the lab's other clients do (``--broker-url``)."""

    def __init__(self, broker: Broker, client_id: str, protocol: str) -> None:
        settings = broker.connection.for_protocol(protocol)
        self.v5 = protocol == "5"
        self.sock = open_stream(settings, timeout=3)  # TCP, TLS or a WebSocket (wire.py)
        props = b"\x00" if self.v5 else b""
        flags = 0x02 | (0x80 if settings.username else 0) | (0x40 if settings.password else 0)
        header = _string("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", 30)
        login = b"".join(_string(v) for v in (settings.username, settings.password) if v)
        self.send(CONNECT << 4, header + props + _string(client_id) + login)
        answer = self.read()
        assert answer is not None and answer[0] == CONNACK, f"no CONNACK but {answer}"

    def send(self, first_byte: int, body: bytes) -> None:
        self.sock.sendall(bytes([first_byte]) + _varint(len(body)) + body)

    def read(self) -> tuple[int, bytes] | None:
        """The next packet as ``(type, body)``, or None once the broker closed the connection."""
        try:
            first = self.sock.recv(1)
            if not first:
                return None
            length, shift = 0, 0
            while True:
                byte = self.sock.recv(1)[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = b""
            while len(body) < length:
                chunk = self.sock.recv(length - len(body))
                if not chunk:
                    return None
                body += chunk
            return first[0] >> 4, body
        except (ConnectionResetError, TimeoutError):
            return None

    def answer(self) -> tuple[int, bytes] | None:
        """The broker's answer to what we sent: the next packet that is not a PUBLISH (a broker
        may send messages, such as retained ones, at any time), or None once it closed."""
        while True:
            packet = self.read()
            if packet is None or packet[0] != PUBLISH:
                return packet

    def subscribe(self, topic_filter: str, qos: int = 1) -> tuple[int, bytes] | None:
        props = b"\x00" if self.v5 else b""
        self.send(
            SUBSCRIBE << 4 | 0x02,
            struct.pack("!H", 1) + props + _string(topic_filter) + bytes([qos]),
        )
        return self.answer()

    def publish(self, topic: str, payload: bytes) -> tuple[int, bytes] | None:
        props = b"\x00" if self.v5 else b""
        self.send(PUBLISH << 4 | 0x02, _string(topic) + struct.pack("!H", 2) + props + payload)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def describe_answer(answer: tuple[int, bytes] | None, v5: bool) -> str:
    if answer is None:
        return "it closed the connection"
    kind, body = answer
    name = PACKET_NAMES.get(kind, f"packet type {kind}")
    if kind == DISCONNECT and body:
        return f"it sent DISCONNECT with reason code 0x{body[0]:02X}"
    if kind == SUBACK:
        return f"it sent SUBACK with code 0x{body[-1]:02X}"
    if kind == PUBACK and v5 and len(body) > 2:
        return f"it sent PUBACK with reason code 0x{body[2]:02X}"
    return f"it sent {name}"


def refused(answer: tuple[int, bytes] | None, expected_ack: int, v5: bool) -> bool:
    """A refusal as the protocol version allows it.

    MQTT 3.1.1 has no server DISCONNECT: the broker closes the connection (or, for SUBSCRIBE,
    answers the failure code 0x80). MQTT 5 adds a DISCONNECT or an acknowledgement with a
    reason code of 0x80 or more before closing.
    """
    if answer is None:
        return True
    kind, body = answer
    if kind == DISCONNECT:
        return v5 and bool(body) and body[0] >= 0x80
    if kind == SUBACK == expected_ack:
        return body[-1] >= 0x80
    if kind == PUBACK == expected_ack:
        return v5 and len(body) > 2 and body[2] >= 0x80
    return False


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad_filter",
    [
        pytest.param("{root}/#/x", id="hash-not-last"),
        pytest.param("{parent}/fac+", id="plus-inside-a-level"),
        pytest.param("{root}/#x", id="hash-inside-a-level"),
    ],
)
@pytest.mark.spec(mqtt311=["MQTT-4.7.1-2", "MQTT-4.7.1-3"], mqtt5=["MQTT-4.7.1-1", "MQTT-4.7.1-2"])
def test_invalid_filters_are_refused(broker, mqtt_client, topic_root, protocol, bad_filter):
    topic_filter = bad_filter.format(root=topic_root, parent=topic_root.rsplit("/", 1)[0])
    with pytest.raises(ValueError):
        # A good client library refuses to send it at all...
        mqtt_client(protocol=protocol).subscribe(topic_filter, qos=1)

    # ... and a broker that receives it anyway must refuse it too.
    raw = RawConnection(broker, f"raw-{topic_root.split('/')[1]}", protocol)
    try:
        answer = raw.subscribe(topic_filter)
    finally:
        raw.close()
    assert refused(answer, SUBACK, protocol == "5"), (
        f"{topic_filter!r} is not a topic filter: a wildcard must fill a whole level and # must "
        f"be the last one (MQTT §4.7.1). A broker must refuse it — MQTT 3.1.1 closes the "
        f"connection (or answers SUBACK 0x80), MQTT 5 sends DISCONNECT or SUBACK with a code "
        f"≥ 0x80 (0x8F Topic Filter invalid) — but {describe_answer(answer, protocol == '5')}."
    )


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad_topic",
    [
        pytest.param("{root}/telemetry/+/temperature", id="plus"),
        pytest.param("{root}/#", id="hash"),
    ],
)
@pytest.mark.spec("MQTT-3.3.2-2", mqtt311=["MQTT-4.7.1-1"], mqtt5=["MQTT-4.7.0-1"])
def test_a_publish_to_a_topic_with_a_wildcard_is_refused(
    broker, mqtt_client, topic_root, protocol, bad_topic
):
    topic = bad_topic.format(root=topic_root)
    watcher = mqtt_client(protocol=protocol)
    watcher.subscribe(f"{topic_root}/#", qos=1)
    with pytest.raises(ValueError):
        mqtt_client(protocol=protocol).publish(topic, b"{}", qos=1)

    raw = RawConnection(broker, f"raw-{topic_root.split('/')[1]}", protocol)
    try:
        answer = raw.publish(topic, b"{}")
    finally:
        raw.close()
    assert refused(answer, PUBACK, protocol == "5"), (
        f"A topic name may not contain wildcards (MQTT §3.3.2.1): {topic!r} names no single "
        f"topic. The broker must refuse the PUBLISH — close the connection (3.1.1) or send "
        f"DISCONNECT 0x82/0x90 (5) — but {describe_answer(answer, protocol == '5')}."
    )
    watcher.assert_nothing_received(
        f"{topic_root}/#",
        why="A refused PUBLISH must reach no subscriber, not even one whose filter matches.",
    )


# -- The solution's factory ----------------------------------------------------------------
# The experiments below start the solution's devices (``--solution``; by default the lab's
# own ``sim.device``), record everything under the test's topic root and hold it to the
# seed's topic tree and the manifest's [filters].


@dataclass(frozen=True)
class Question:
    """A question the factory's data answers, and how to recognise a topic that answers it."""

    name: str
    meaning: str
    answers: Callable[[list[str]], bool]


#: the questions of the [filters] table; ``answers`` gets the levels below the topic root
QUESTIONS = (
    Question(
        "every_temperature",
        "every temperature reading of every device (telemetry whose sensor is 'temperature')",
        lambda p: len(p) == 3 and p[0] == "telemetry" and p[2] == "temperature",
    ),
    Question(
        "press_telemetry",
        "every reading of the press, whatever the sensor",
        lambda p: len(p) == 3 and p[0] == "telemetry" and p[1] == "press",
    ),
    Question(
        "robot_arm",
        "everything the robot arm publishes: its telemetry, alarms, state, status and events",
        lambda p: len(p) >= 2 and p[0] in DEVICE_KINDS and p[1] == "robot_arm",
    ),
    Question(
        "robot_arm_commands",
        "every command sent to the robot arm, whoever sends it",
        lambda p: len(p) == 3 and p[0] == "commands" and p[2] == "robot_arm",
    ),
    Question("all_alarms", "every alarm of every device", lambda p: p[0] == "alarms"),
    Question(
        "all_state",
        "the retained state (running/stopped/fault) of every device",
        lambda p: len(p) == 2 and p[0] == "state",
    ),
    Question(
        "all_status",
        "the online/offline status of every device",
        lambda p: len(p) == 2 and p[0] == "status",
    ),
    Question("everything", "everything the factory publishes", lambda p: bool(p)),
)


def start_seed_devices(
    factory_launcher, observer: RecordingClient, protocol: str, kinds=SEED_DEVICES
) -> dict[str, DeviceHandle]:
    """Start the solution's devices at once (device id = kind, anomalies on); wait until each
    has published its ``online`` status, which ``observer`` (subscribed to the root) sees."""
    launcher = factory_launcher(protocol=protocol)
    handles: dict[str, DeviceHandle] = or_fail(
        lambda: {
            kind: launcher.start_device(kind, kind, anomaly=True, wait_online=False)
            for kind in kinds
        }
    )
    deadline = time.monotonic() + launcher.ready_timeout
    for handle in handles.values():
        topic = handle.topic("status")

        def online(m: ReceivedMessage, topic: str = topic) -> bool:
            return m.topic == topic and json_field(m, "status") == "online"

        while not observer.received(online):
            if not handle.process.is_running():
                pytest.fail(
                    handle.process.describe_failure(f"exited before publishing online on {topic}"),
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                elsewhere = sorted(
                    {m.topic for m in observer.received() if handle.device_id in m.topic}
                )
                pytest.fail(
                    handle.process.describe_failure(
                        f"never published a retained 'online' status on {topic}"
                        + (f" (it published on: {', '.join(elsewhere[:5])})" if elsewhere else ""),
                        "publish your status to <VF_TOPIC_ROOT>/status/<device_id> once connected",
                    ),
                    pytrace=False,
                )
            try:
                observer.wait_for_message(online, timeout=0.1)
            except AssertionError:
                continue
    return handles


def wait_for_factory_traffic(
    observer: RecordingClient, root: str, devices, timeout: float = 5.0, alarms_from=()
) -> None:
    """Wait until every device has sent telemetry and state, and one alarm was raised.

    :param alarms_from: devices that must each have raised an alarm too (a question about
        one device judges its filter on every kind of message that device publishes).

    :raises AssertionError: naming what never came, once ``timeout`` has passed in all, or
        at once when a device published off the seed's tree (the rest would never come).
    """
    deadline = time.monotonic() + timeout
    wanted = [
        (
            f"{root}/{kind}/{device_id}/#",
            f"A running device publishes its {kind} under {root}/{kind}/{device_id}: the "
            f"device {device_id!r} (started with that id) published none there.",
        )
        for device_id in devices
        for kind in ("telemetry", "state")
    ]
    wanted.append(
        (
            f"{root}/alarms/#",
            f"Devices started with the anomaly option raise alarms within seconds, on "
            f"{root}/alarms/<device>/<sensor>; none came.",
        )
    )
    wanted += [
        (
            f"{root}/alarms/{device_id}/#",
            f"A device started with the anomaly option raises alarms within seconds, on "
            f"{root}/alarms/<device>/<sensor>: {device_id!r} raised none.",
        )
        for device_id in alarms_from
    ]
    for topic_filter, why in wanted:
        while not observer.received(topic_filter):
            off_tree = first_tree_problem(observer, root, tuple(devices))
            if off_tree:
                raise AssertionError(f"{why}\n  It published {off_tree}")
            remaining = deadline - time.monotonic()
            try:
                observer.wait_for_message(topic_filter, timeout=max(0.01, min(0.2, remaining)))
            except AssertionError:
                if remaining <= 0.2:
                    observer.wait_for_message(topic_filter, timeout=0.01, why=why)


def first_tree_problem(observer: RecordingClient, root: str, device_ids) -> str:
    """``<topic>: <level out of place>`` for the first message off the seed's tree, or ``""``."""
    for message in observer.received():
        if levels(message.topic, root)[:1] == ["commands"]:
            continue  # the lab's own commands, as a dashboard
        problem = tree_problem(message.topic, root, device_ids, message.payload)
        if problem:
            return f"{message.topic.replace(root, '{root}')}: {problem}"
    return ""


def stop_all(handles: dict[str, DeviceHandle]) -> None:
    """SIGTERM every device first, then wait for each: they shut down together."""
    for handle in handles.values():
        if handle.process.is_running():
            handle.process.signal(signal.SIGTERM)
    for handle in handles.values():
        handle.stop()


def _device_id_in(payload: bytes) -> object:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data.get("device_id") if isinstance(data, dict) else None


def tree_problem(topic: str, root: str, device_ids, payload: bytes) -> str | None:
    """Which level of ``topic`` is out of place in the seed's tree, or None when it fits."""
    p = levels(topic, root)
    if not p:
        return f"it is not under the topic root {root} (VF_TOPIC_ROOT)"
    kind = p[0]
    if kind not in TREE:
        near = next((k for k in TREE if k.lower() == kind.lower()), None)
        if near:
            return f"level 1 is {kind!r}, not {near!r}: topic levels are case sensitive"
        if kind in device_ids:
            return (
                f"level 1 is the device id {kind!r}: the tree puts the kind of message first "
                f"(telemetry, alarms, state, status), then the device"
            )
        return f"level 1 is {kind!r}; the tree has {', '.join(TREE)} there"
    if kind == "commands":
        return "a device publishes no commands; commands come from controllers and dashboards"
    shape = TREE[kind]
    if len(p) - 1 != len(shape):
        return f"it has {len(p) - 1} level(s) after {kind!r}; the tree has {kind}/{'/'.join(shape)}"
    if p[1] not in device_ids:
        if len(p) > 2 and p[2] in device_ids:
            return (
                f"levels 2 and 3 are swapped: the device ({p[2]}) comes before the sensor "
                f"({p[1]}) in {kind}/<device>/<sensor>"
            )
        return f"level 2 is {p[1]!r}, which is not the id of a running device ({', '.join(device_ids)})"
    claimed = _device_id_in(payload)
    if claimed is not None and claimed != p[1]:
        return f"level 2 is {p[1]!r} but the payload says device_id {claimed!r}"
    if any(level == "" for level in p):
        return "it has an empty level"
    return None


@pytest.mark.solution
def test_devices_publish_on_the_seed_topic_tree(
    factory_launcher, mqtt_client, topic_root, protocol
):
    observer = mqtt_client()
    observer.subscribe(f"{topic_root}/#", qos=1)
    handles = start_seed_devices(factory_launcher, observer, protocol)
    try:
        wait_for_factory_traffic(observer, topic_root, handles)
        shortfall = ""
    except AssertionError as missing:  # judged after the tree: a misplaced level explains it
        shortfall = str(missing)
    stop_all(handles)
    observer.sync()

    problems: dict[str, str] = {}
    for message in observer.received():
        problem = tree_problem(message.topic, topic_root, tuple(handles), message.payload)
        if problem is None:
            try:
                validate_message(message.topic, message.payload, root=topic_root)
            except PayloadError as error:
                problem = str(error)
        # the conventions `mqtt-lab lint-topics` checks (lowercase levels, ...), rule named
        linted = lint_topic(message.topic, topic_root, tuple(handles))
        if problem is None and linted:
            problem = linted[0].detail
        if problem and linted:
            problem += f" [lint-topics: {', '.join(f.rule for f in linted)}]"
        if problem and message.topic not in problems:
            problems[message.topic] = problem
    shown = "\n".join(
        f"  {topic.replace(topic_root, '{root}')}: {why}"
        for topic, why in list(problems.items())[:6]
    )
    if problems:
        pytest.fail(
            f"The factory's topic tree is {{root}}/telemetry|alarms/<device>/<sensor> and "
            f"{{root}}/state|status/<device> (the seed's 'Topic Structure'): dashboards and "
            f"controllers subscribe with filters built on it, so a topic out of place is a message "
            f"nobody receives. {len(problems)} topic(s) of your devices do not fit:\n{shown}\n"
            f"(`mqtt-lab lint-topics --broker-url URL` checks a running factory the same way)",
            pytrace=False,
        )
    if shortfall:
        pytest.fail(shortfall, pytrace=False)


def subscribe_filter(
    mqtt_client, question: Question, topic_filter: str, root: str
) -> RecordingClient:
    client = mqtt_client()
    try:
        codes = client.subscribe(topic_filter, qos=1)
    except ValueError:  # paho checks the filter before sending it
        codes = None
    if codes is None:
        pytest.fail(
            f"[filters] {question.name} = {topic_filter.replace(root, '{root}')!r} is not a "
            f"valid topic filter: a wildcard fills a whole level (+ one level, # the last "
            f"level and everything below it).",
            pytrace=False,
        )
    if codes and codes[0].is_failure:
        pytest.fail(
            f"the broker refused [filters] {question.name} = {topic_filter!r}: {codes[0]}",
            pytrace=False,
        )
    return client


@pytest.mark.solution
def test_each_filter_gets_exactly_the_topics_its_question_asks_for(
    solution, factory_launcher, mqtt_client, topic_root, protocol
):
    filters: dict[str, str] = {}
    missing = []
    for question in QUESTIONS:
        try:
            filters[question.name] = solution.require_filter(question.name, question.meaning)
        except ManifestError as error:
            missing.append(str(error))
    if missing:
        pytest.fail("\n".join(missing), pytrace=False)

    observer = mqtt_client()
    observer.subscribe(f"{topic_root}/#", qos=1)
    subscribers = {
        q.name: subscribe_filter(
            mqtt_client, q, filters[q.name].replace("{root}", topic_root), topic_root
        )
        for q in QUESTIONS
    }
    handles = start_seed_devices(factory_launcher, observer, protocol)
    dashboard = mqtt_client()
    for device_id, setpoint, value in (
        ("robot_arm", "cycle_time", 4.5),
        ("press", "temperature", 70.0),
    ):
        command = validate(
            "command",
            {"command": "set", "setpoint": setpoint, "value": value, "reason": "lesson 01"},
        )
        dashboard.publish(f"{topic_root}/commands/dashboard/{device_id}", command, qos=1)
    # The robot arm's question covers its events too, which its device writes only when it
    # rejects a command: the lab adds one entry to that diary, so that every kind of message
    # the question covers is in the traffic its filter is judged on.
    diary = validate(
        "event",
        {
            "ts": time.time(),
            "device_id": "robot_arm",
            "event": "command_rejected",
            "reason": "lesson 01: an entry in the robot arm's diary",
            "topic": f"{topic_root}/commands/dashboard/robot_arm",
            "received": "(none)",
        },
    )
    dashboard.publish(f"{topic_root}/events/robot_arm", diary, qos=1)
    try:
        wait_for_factory_traffic(observer, topic_root, handles, alarms_from=("robot_arm",))
        shortfall = ""
    except AssertionError as missing:
        shortfall = str(missing)
    if shortfall:  # outside the except block: one message, no chained traceback
        pytest.fail(
            f"The filters are judged on the factory's live traffic, and it is not on the seed's "
            f"tree (test_devices_publish_on_the_seed_topic_tree says which level is out of "
            f"place):\n{shortfall}",
            pytrace=False,
        )
    stop_all(handles)
    observer.sync()
    seen = {m.topic for m in observer.received()}

    problems = []
    for question in QUESTIONS:
        topic_filter = filters[question.name]
        expected = {t for t in seen if question.answers(levels(t, topic_root))}
        assert expected, (
            f"Nothing the factory published answers {question.name!r} ({question.meaning}), so "
            f"its filter cannot be judged: check that your devices publish on the seed's tree."
        )
        subscribers[question.name].sync()
        got = {m.topic for m in subscribers[question.name].received()}
        if got != expected:
            hint = ""
            if not topic_filter.startswith(("{root}", "+", "#")):
                hint = " Write the topic root as {root}: the lab gives every test its own."
            problems.append(
                explain_match(
                    topic_filter.replace("{root}", topic_root),
                    f"[filters] {question.name} must get {question.meaning}.{hint}",
                    expected,
                    got,
                    topic_root,
                )
            )
    if problems:
        pytest.fail(
            "A subscription gets every message whose topic its filter matches — no more, no "
            "less. `+` matches exactly one level, `#` the level it stands on and every level "
            "below.\n" + "\n".join(problems),
            pytrace=False,
        )


@pytest.mark.solution
def test_a_stop_for_the_conveyor_does_not_stop_the_press(
    factory_launcher, mqtt_client, topic_root, protocol
):
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/state/+", qos=1)
    watcher.subscribe(f"{topic_root}/status/+", qos=1)
    handles = start_seed_devices(factory_launcher, watcher, protocol, kinds=("press", "conveyor"))
    dashboard = mqtt_client()

    stop = validate("command", {"command": "stop", "reason": "lesson 01: the conveyor only"})
    dashboard.publish(f"{topic_root}/commands/dashboard/conveyor", stop, qos=1)
    watcher.wait_for_message(
        lambda m: m.topic == f"{topic_root}/state/conveyor" and json_field(m, "state") == "stopped",
        why=f"A device obeys the commands sent to {topic_root}/commands/<publisher>/<its id>: "
        f"the conveyor got a stop there and never published a 'stopped' state.",
    )
    # A command to the press itself, sent after the stop: once the press has answered it, it
    # has also handled anything it received before (one connection delivers in order).
    set_press = validate(
        "command",
        {"command": "set", "setpoint": "temperature", "value": 70.0, "reason": "lesson 01"},
    )
    dashboard.publish(f"{topic_root}/commands/dashboard/press", set_press, qos=1)
    answered = watcher.wait_for_message(
        lambda m: (
            m.topic == f"{topic_root}/state/press"
            and (json_field(m, "setpoints") or {}).get("temperature") == 70.0
        ),
        why=f"The press obeys a 'set' sent to {topic_root}/commands/dashboard/press and "
        f"publishes its new state with the setpoint; it never did.",
    )
    press_states = [
        validate("state", m.payload)["state"] for m in watcher.received(f"{topic_root}/state/press")
    ]
    assert "stopped" not in press_states and json_field(answered, "state") == "running", (
        f"The press stopped (its states: {' → '.join(press_states)}) when a stop was sent to "
        f"the conveyor on {topic_root}/commands/dashboard/conveyor. A device must subscribe "
        f"only to its own commands — {{root}}/commands/+/<its id>, any publisher, one device — "
        f"not {{root}}/commands/#, which hands it every machine's commands."
    )
    assert handles["press"].process.is_running()


@pytest.mark.solution
@pytest.mark.broker_needs(LOG)
def test_a_device_subscribes_only_to_its_own_commands(
    broker, factory_launcher, mqtt_client, topic_root, protocol
):
    mark = broker.log_mark()
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=1)
    press = start_seed_devices(factory_launcher, watcher, protocol, kinds=("press",))["press"]
    # Once the press has obeyed a command, its command subscription is surely in place.
    dashboard = mqtt_client()
    command = validate(
        "command",
        {"command": "set", "setpoint": "temperature", "value": 70.0, "reason": "lesson 01"},
    )
    dashboard.publish(f"{topic_root}/commands/dashboard/press", command, qos=1)
    watcher.wait_for_message(
        lambda m: (
            m.topic == f"{topic_root}/state/press"
            and (json_field(m, "setpoints") or {}).get("temperature") == 70.0
        ),
        why=f"The press obeys a 'set' sent to {topic_root}/commands/dashboard/press and "
        f"publishes its new state; it never did.",
    )
    filters = [f for f, _qos in subscriptions(broker.log_lines()[mark:], press.client_id)]
    own = [f"{topic_root}/commands/{who}/press" for who in ("dashboard", "controller-7")]
    foreign = [f"{topic_root}/commands/{who}/conveyor" for who in ("dashboard", "controller-7")]

    too_wide = [f for f in filters if any(mqtt.topic_matches_sub(f, t) for t in foreign)]
    assert not too_wide, (
        f"The press subscribed to {', '.join(too_wide)}, which also matches commands meant for "
        f"other machines ({foreign[0]}). A device subscribes only to its own commands: "
        f"{topic_root}/commands/+/press (`+`: whoever sends them)."
    )
    for topic in own:
        assert any(mqtt.topic_matches_sub(f, topic) for f in filters), (
            f"None of the press's subscriptions ({', '.join(filters) or 'none'}) matches "
            f"{topic}: a device must hear its commands from every publisher — "
            f"{topic_root}/commands/+/press."
        )


#: commands a device must refuse without falling over: it cannot choose what the network sends
BAD_COMMANDS = [
    pytest.param(b'{"command": "self_destruct", "reason": "lesson 01"}', id="unknown-command"),
    pytest.param(b"stop the press!", id="not-json"),
]


@pytest.mark.solution
@pytest.mark.parametrize("bad_command", BAD_COMMANDS)
def test_a_device_rejects_a_bad_command_and_keeps_running(
    factory_launcher, mqtt_client, topic_root, protocol, bad_command
):
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=1)
    press = start_seed_devices(factory_launcher, watcher, protocol, kinds=("press",))["press"]
    dashboard = mqtt_client()
    commands = f"{topic_root}/commands/dashboard/press"

    def setpoint_is(value: float) -> Callable[[ReceivedMessage], bool]:
        def answered(m: ReceivedMessage) -> bool:
            """the press's state with its new temperature setpoint"""
            return (
                m.topic == f"{topic_root}/state/press"
                and (json_field(m, "setpoints") or {}).get("temperature") == value
            )

        return answered

    # First the press hears its commands (sent again until it obeys one: a device may say
    # online a moment before its subscription is in place).
    warm_up = {"command": "set", "setpoint": "temperature", "value": 69.0, "reason": "lesson 01"}
    deadline = time.monotonic() + 5
    while not watcher.received(setpoint_is(69.0)) and time.monotonic() < deadline:
        dashboard.publish(commands, validate("command", warm_up), qos=1)
        with contextlib.suppress(AssertionError):
            watcher.wait_for_message(setpoint_is(69.0), timeout=0.5)
    if not watcher.received(setpoint_is(69.0)):
        pytest.fail(
            f"The press never obeyed a valid 'set' on {commands.replace(topic_root, '{root}')} "
            "(no state with the new setpoint within 5 s): a device subscribes to "
            "{root}/commands/+/<its id> and publishes its new state once it obeys.",
            pytrace=False,
        )
    dashboard.publish(commands, bad_command, qos=1)
    # A good command after the bad one: one connection delivers in order, so once the press
    # has answered it, it has handled the bad one too, and survived it.
    set_press = validate(
        "command",
        {"command": "set", "setpoint": "temperature", "value": 71.0, "reason": "lesson 01"},
    )
    dashboard.publish(commands, set_press, qos=1)
    answered = setpoint_is(71.0)

    deadline = time.monotonic() + 10
    while not watcher.received(answered) and press.process.is_running():
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(AssertionError):
            watcher.wait_for_message(answered, timeout=0.2)
    sent = bad_command.decode(errors="replace")
    rule = (
        "A command is input from the network, and anyone who may publish there can send "
        "anything: a device must reject what it does not understand (publish a "
        "command_rejected event on {root}/events/<device>, log a line) and keep running."
    )
    if not press.process.is_running():
        press.process.wait_exit(5)
        pytest.fail(
            press.process.describe_failure(
                f"exited after the command {sent!r} on {commands.replace(topic_root, '{root}')}",
                "parse a command inside try/except, check its name against the ones you know, "
                "and answer anything else with a command_rejected event instead of raising",
            )
            + f"\n{rule}",
            pytrace=False,
        )
    if not watcher.received(answered):
        pytest.fail(
            f"After the command {sent!r}, the press no longer obeyed a valid 'set' on "
            f"{commands.replace(topic_root, '{root}')} (no state with the new setpoint within "
            f"10 s), though its process still runs. {rule}",
            pytrace=False,
        )
