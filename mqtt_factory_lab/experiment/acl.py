"""Lesson 06's instruments: the parties of an access-control experiment and how a verdict is told.

The chapter (``labs/06_acl.py``) holds the concept, the permission matrix and the
experiments; this module what they share:

* :class:`Parties` — one connection per client id of the matrix;
* :func:`try_publish_cell`, :func:`try_read_cell` — one cell of the permission matrix tried
  on the broker, with its witness and its control: what came through, and the broker's answer;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import Broker
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.acl import Cell, MatrixClient
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


def wait_for_reports(dashboard: RecordingClient, device_id: str, acl: Path) -> None:
    """Wait until ``dashboard`` (subscribed to ``factory/#``) has the device's status, state
    and telemetry, each valid against its schema; fail naming the report that never came
    and the two causes (the device, or its ACL ``acl``)."""
    __tracebackhide__ = True
    for kind in ("status", "state", "telemetry"):
        topic = f"factory/{kind}/{device_id}" + ("/#" if kind == "telemetry" else "")
        message = dashboard.wait_for_message(
            topic,
            timeout=10,
            why=f"A running device publishes its {kind} on {topic}; the dashboard, which "
            "may read everything, saw none. Either the device does not publish it, or its "
            f"ACL ({shown(acl)}) denies the write (the broker's log below says which).",
        )
        validate(kind, message.payload)


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


@dataclass
class PublishTried:
    """What happened when a cell's client published to its topic (:func:`try_publish_cell`)."""

    payload: bytes
    #: the control's payload (a client that may publish there), for a denied cell
    control: bytes | None
    #: the broker's answer to the publish (QoS 1): a PUBACK reason code
    answer: ReasonCode
    #: the payloads the witness (who may read the topic) received
    got: set[bytes]
    #: the broker's ``Denied PUBLISH`` lines for the client and topic
    denied: list[str]


def try_publish_cell(cell: Cell, party: Parties, broker: Broker) -> PublishTried:
    """The cell's client publishes (QoS 1) to the cell's topic, watched by the witness, who
    may read it; for a denied cell, the control (who may write there) publishes too. A round
    trip through the witness's session proves what did not come."""
    witness = party(cell.witness)
    witness.subscribe(cell.topic, qos=1)
    round_trip(witness)
    mark = broker.log_mark()
    payload = probe(cell.client, "publish")
    answer = publish_for_ack(party(cell.client), cell.topic, payload, qos=1)
    control = None
    if cell.control is not None:
        control = probe(cell.control, "control")
        party(cell.control).publish(cell.topic, control, qos=1)
    round_trip(witness)
    return PublishTried(
        payload,
        control,
        answer,
        {m.payload for m in witness.received(cell.topic)},
        denials(broker, mark, cell.client.client_id, cell.topic),
    )


def why_undelivered(cell: Cell, tried: PublishTried) -> str:
    """Why an allowed publish never reached the witness, in the broker's own evidence (its
    PUBACK code, its ``Denied PUBLISH`` line) and the fix: ``"; PUBACK 0x87 ….\nThe ACL …"``."""
    answer, denied = tried.answer, tried.denied
    evidence = f"; PUBACK {answer.value:#04x} {answer}" if answer.is_failure else ""
    evidence += f"; the broker logged: {denied[0]}" if denied else ""
    if denied or answer.is_failure:
        fix = f"The ACL denies the write: add {how_to_allow(cell.client, 'write', cell.topic)}."
    else:
        fix = (
            f"The broker took the write but did not deliver it: the ACL denies "
            f"{cell.witness.client_id} reading {cell.topic}."
        )
    return f"{evidence}.\n{fix}"


@dataclass
class ReadTried:
    """What happened when the witness published to a cell's topic (:func:`try_read_cell`)."""

    payload: bytes
    #: the broker's answer to the cell's client's SUBSCRIBE
    suback: ReasonCode
    #: the broker's answer to the witness's publish, and its ``Denied PUBLISH`` lines
    answer: ReasonCode
    refused: list[str]
    #: the payloads the cell's client received
    got: set[bytes]
    #: the control (who may read the topic), subscribed too, for a denied cell
    control: RecordingClient | None


def try_read_cell(cell: Cell, party: Parties, broker: Broker) -> ReadTried:
    """The cell's client subscribes to the cell's topic (with the control, who may read it,
    for a denied cell); the witness, who may write it, publishes (QoS 1). A round trip
    through the client's session proves what did not come."""
    subject = party(cell.client)
    suback = subject.subscribe(cell.topic, qos=1)[0]
    control = party(cell.control) if cell.control is not None else None
    if control is not None and control is not subject:
        control.subscribe(cell.topic, qos=1)
    round_trip(subject)
    payload = probe(cell.witness, "publish")
    mark = broker.log_mark()
    answer = publish_for_ack(party(cell.witness), cell.topic, payload, qos=1)
    round_trip(subject)
    return ReadTried(
        payload,
        suback,
        answer,
        denials(broker, mark, cell.witness.client_id, cell.topic),
        {m.payload for m in subject.received(cell.topic)},
        control,
    )
