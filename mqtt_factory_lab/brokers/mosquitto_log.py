"""What a Mosquitto log (``log_type all``) says about clients, parsed in one place.

Lessons read the broker's own account as evidence: which client connected with which
client id and clean flag, what it subscribed to at which QoS. The formats are
Mosquitto's (checked on 2.0.11 and 2.0.x images)::

    New client connected from 127.0.0.1:50312 as press-01 (p5, c1, k30).
    press-01 1 factory/commands/+/press-01          (a SUBSCRIBE: client, QoS, filter)
    Received PUBLISH from dashboard (d0, q1, r0, m3, 'factory/commands/…', ... (57 bytes))
    Sending PUBLISH to press-01 (d0, q1, r0, m1, 'factory/commands/…', ... (57 bytes))
    Sending PUBACK to dashboard (m3, rc0)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

CONNECTED = re.compile(r"New client connected from \S+ as (\S+) \(p(\d+), c([01]), k(\d+)")


@dataclass(frozen=True)
class Connection:
    """One logged connection: ``clean`` is the CONNECT's clean start / clean session flag."""

    client_id: str
    protocol_level: int
    clean: bool
    keepalive: int


def connections(lines: Iterable[str]) -> list[Connection]:
    """Every connection the lines log, in order."""
    found = []
    for line in lines:
        match = CONNECTED.search(line)
        if match:
            client_id, level, clean, keepalive = match.groups()
            found.append(Connection(client_id, int(level), clean == "1", int(keepalive)))
    return found


def subscriptions(lines: Iterable[str], client_id: str) -> list[tuple[str, int]]:
    """``(filter, qos)`` of every SUBSCRIBE the lines log for ``client_id``, in order."""
    pattern = re.compile(rf"(?:^|: ){re.escape(client_id)} (\d) (.+)$")
    return [(m.group(2), int(m.group(1))) for line in lines if (m := pattern.search(line))]


def pubacks_from(lines: Iterable[str], client_id: str) -> set[int]:
    """Packet ids of every PUBACK the lines log as received from ``client_id``.

    ``Received PUBACK from datacenter-1 (Mid: 7, RC:0)``: the client said "I have it".
    """
    pattern = re.compile(rf"Received PUBACK from {re.escape(client_id)} \(Mid: (\d+)")
    return {int(m.group(1)) for line in lines if (m := pattern.search(line))}


def qos1_sent_to(lines: Iterable[str], client_id: str, topic: str) -> set[int]:
    """Packet ids of every QoS 1 PUBLISH on ``topic`` the lines log as sent to ``client_id``.

    ``Sending PUBLISH to datacenter-1 (d0, q1, r0, m7, 'factory/…/quality', ... (42 bytes))``.
    """
    pattern = re.compile(
        rf"Sending PUBLISH to {re.escape(client_id)} \(d\d, q1, r\d, m(\d+), '{re.escape(topic)}'"
    )
    return {int(m.group(1)) for line in lines if (m := pattern.search(line))}


def routed_to(lines: Iterable[str], publisher: str, topic: str) -> list[str] | None:
    """The clients the broker sent the first QoS 1 PUBLISH from ``publisher`` on ``topic`` to,
    or None while the lines do not show that it acknowledged it yet.

    Mosquitto hands a QoS 1 message to every matching subscriber that is online (and has room
    in flight) before it sends the publisher its PUBACK, so the ``Sending PUBLISH`` lines
    between the two are where it went. A subscriber whose in-flight window is full gets it
    queued, without a line: "sent to nobody" proves "no subscription matched" only for a client
    known to have sent no SUBSCRIBE on its session.
    """
    received = re.compile(
        rf"Received PUBLISH from {re.escape(publisher)} \(d\d, q1, r\d, m(\d+), '{re.escape(topic)}'"
    )
    sent = re.compile(rf"Sending PUBLISH to (\S+) \(d\d, q\d, r\d, m\d+, '{re.escape(topic)}'")
    to: list[str] | None = None
    acked: re.Pattern[str] | None = None
    for line in lines:
        if to is None:
            if match := received.search(line):
                to = []
                acked = re.compile(
                    rf"Sending PUBACK to {re.escape(publisher)} \(m{match.group(1)},"
                )
        elif acked is not None and acked.search(line):
            return to
        elif match := sent.search(line):
            to.append(match.group(1))
    return None
